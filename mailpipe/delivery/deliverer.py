"""``mailpipe deliver``: a long-lived deliverer that sends events the moment they are due.

The database notifies ``mailpipe_events_due`` when a statement leaves events queued and due
(migration 0010's trigger, for mailpipe's enqueue and the application's own SQL alike). The
deliverer LISTENs on a dedicated session and drains at once with the drain engine itself
(:class:`~mailpipe.delivery.drainer.Drainer`: the same claims, leases, quotas, failover and
recording as ``process_email_queue``), with its SMTP connections kept open between drains.

- **Lanes**: a priority lane (events of priority <= 1 by default, small batches) beside the
  bulk lane's drainers, so a password reset never waits behind a large batch. Every drainer
  claims and reserves quotas under one shared gate (in claim order, as in a flow run).
- **Polling**: every lane also looks every ``poll_seconds`` without a notification, so a lost
  notification, a pooler that cannot LISTEN, or retries and scheduled sends that become due
  by the clock (they do not notify) never wait for the sweeper.
- **Restarts**: the listening session reconnects with backoff and wakes every lane when it is
  back (what was inserted meanwhile); the pooled connections are replaced as they fail.
- **Stopping**: ``stop`` set (SIGTERM, SIGINT): each drainer finishes and records the batch
  in hand, then the leases this deliverer still holds (none unless a batch could not be
  recorded) go back to the queue.

Several deliverers (and the every-minute sweeper) may run on one queue: claims skip each
other's rows, and a deliverer killed with -9 leaves leases the others rescue when they expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailpipe.config import Settings, get_settings
from mailpipe.db import Database
from mailpipe.delivery.drainer import Drainer
from mailpipe.delivery.result import DrainResult
from mailpipe.delivery.runs import RunState
from mailpipe.errors import DatabaseError, DatabaseUnavailable, MailpipeError
from mailpipe.queue import release_leases

log = logging.getLogger(__name__)

# A deliverer's "run" (what RunState shares: providers taken out, one failure count per
# provider in the database) lasts this long, the cadence of process_email_queue's runs: a dead
# provider is counted as often as with flow runs, and tried again a minute later.
RUN_SECONDS = 60.0

CHANNEL = "mailpipe_events_due"  # migration 0010's trigger notifies here
APPLICATION_NAME = "mailpipe deliver"  # its sessions in pg_stat_activity

# Reports what the deliverer does (started, heartbeat, stopped) to whoever runs it: the CLI
# turns them into Prefect events when a Prefect API is configured.
Report = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class DelivererOptions:
    """How a deliverer drains: its lanes, batch sizes and how often it looks unprompted."""

    poll_seconds: float = 5.0  # a look at the queue without a notification
    batch_size: int = 200  # the bulk lane's batches
    concurrency: int = 1  # bulk drainers side by side
    priority_lane: int | None = 1  # claims only priority <= this (None: no priority lane)
    priority_batch_size: int = 20  # small: a priority event never waits long for its batch
    time_budget: float = 30.0  # one drain's budget; the lane goes on after it
    heartbeat_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.poll_seconds <= 0 or self.time_budget <= 0 or self.heartbeat_seconds <= 0:
            raise MailpipeError("poll_seconds, time_budget and heartbeat_seconds must be > 0")
        if self.batch_size < 1 or self.concurrency < 1 or self.priority_batch_size < 1:
            raise MailpipeError("batch sizes and concurrency must be >= 1")


@dataclass
class DelivererStats:
    """What a deliverer did since it started."""

    counts: Counter[str] = field(default_factory=Counter)  # outcome word -> events
    drains: int = 0
    notifications: int = 0
    listens: int = 0  # LISTEN sessions opened (more than one: it reconnected)
    errors: int = 0  # drains a database error cut short
    rescued: int = 0
    released: int = 0  # leases given back when it stopped
    heartbeats: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, result: DrainResult) -> None:
        """Count one drain."""
        self.counts.update(result.counts)
        self.rescued += result.rescued
        self.drains += 1

    def summary(self) -> dict[str, Any]:
        """Counts for logs and events."""
        return {
            "sent": self.counts.get("sent", 0),
            "events": sum(self.counts.values()),
            "counts": dict(self.counts),
            "drains": self.drains,
            "notifications": self.notifications,
            "listens": self.listens,
            "errors": self.errors,
            "rescued": self.rescued,
            "released": self.released,
            "uptime_seconds": round(time.monotonic() - self.started, 1),
        }


@dataclass
class _Slot:
    """One drainer of a lane and the event that wakes it."""

    lane: str
    drainer: Drainer
    batch_size: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: bool = False  # between drains, waiting for a notification or the poll
    rescued_at: float = float("-inf")  # when its drain last rescued expired leases


class Deliverer:
    """Drains due events as they arrive; see the module docstring."""

    def __init__(
        self,
        db: Database,
        options: DelivererOptions | None = None,
        *,
        settings: Settings | None = None,
        report: Report | None = None,
    ) -> None:
        self.db = db
        self.options = options or DelivererOptions()
        self.settings = settings or get_settings()
        self.report = report
        self.stats = DelivererStats()
        self.listening = asyncio.Event()  # set while the LISTEN session is up
        self._gate = asyncio.Lock()  # shared by every drainer: claims in priority order
        self._run = RunState(gate=self._gate)
        self._run_started = time.monotonic()
        opts = self.options
        self.slots: list[_Slot] = []
        if opts.priority_lane is not None:
            self.slots.append(
                _Slot("priority", self._drainer(opts.priority_lane), opts.priority_batch_size)
            )
        self.slots += [
            _Slot("bulk", self._drainer(None), opts.batch_size) for _ in range(opts.concurrency)
        ]

    def _drainer(self, max_priority: int | None) -> Drainer:
        return Drainer(
            self.db,
            self.settings,
            max_priority=max_priority,
            keep_connections=True,
            run=self._run,
        )

    @property
    def idle(self) -> bool:
        """Every drainer waits for a notification, none has been woken yet: what is due
        now has been drained."""
        return all(s.waiting and not s.wake.is_set() for s in self.slots)

    @property
    def workers(self) -> list[str]:
        """The ``locked_by`` names of this deliverer's drainers."""
        return [s.drainer.worker for s in self.slots]

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> DelivererStats:
        """Deliver until ``stop`` is set; ``ready`` is set once it listens (or polls, when it
        cannot listen). Returns what it did."""
        self._emit("started", dataclasses.asdict(self.options))
        listener = asyncio.create_task(self._listen(stop, ready))
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        lanes = [asyncio.create_task(self._lane(slot, stop)) for slot in self.slots]
        try:
            # A drainer's failure is logged and retried inside its loop; only a bug ends one.
            await asyncio.gather(*lanes)
        finally:
            stop.set()
            # The other drainers finish and record the batch in hand before leases are
            # released: releasing a lease under a drainer still sending would send twice.
            await asyncio.gather(*lanes, return_exceptions=True)
            for task in (listener, heartbeat):
                task.cancel()
            await asyncio.gather(listener, heartbeat, return_exceptions=True)
            await asyncio.gather(*(s.drainer.close() for s in self.slots), return_exceptions=True)
            await self._release()
            self._emit("stopped", self.stats.summary())
        return self.stats

    def wake(self, priority: int | None = None) -> None:
        """Wake the drainers that may claim an event of ``priority`` (None: every one)."""
        lane = self.options.priority_lane
        for slot in self.slots:
            if slot.lane == "bulk" or priority is None or lane is None or priority <= lane:
                slot.wake.set()

    async def _lane(self, slot: _Slot, stop: asyncio.Event) -> None:
        """Drain, then wait for a notification or ``poll_seconds``; again until stopped."""
        backoff = 0.1
        while not stop.is_set():
            slot.wake.clear()  # before draining: a notification during the drain counts
            slot.drainer.start_run(self._current_run())
            # Rescuing leases (a dead peer's) once per poll interval is enough; not per wake-up.
            rescue = time.monotonic() - slot.rescued_at >= self.options.poll_seconds
            try:
                result = await slot.drainer.drain(
                    batch_size=slot.batch_size,
                    time_budget=self.options.time_budget,
                    stop=stop,
                    rescue=rescue,
                )
            except MailpipeError as exc:
                # The pool replaces a dead connection on the next try; what the cut batch
                # held is rescued when its lease expires (or released when we stop).
                self.stats.errors += 1
                log.warning("%s drainer: %s; trying again in %.1f s", slot.lane, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.1
            if rescue:
                slot.rescued_at = time.monotonic()
            self.stats.add(result)
            if result.stopped_by == "time_budget":
                continue  # more is due
            waits = [asyncio.ensure_future(slot.wake.wait()), asyncio.ensure_future(stop.wait())]
            slot.waiting = True
            try:
                await asyncio.wait(
                    waits, timeout=self.options.poll_seconds, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                slot.waiting = False
                for waiter in waits:
                    waiter.cancel()

    def _current_run(self) -> RunState:
        """The run the next drain belongs to: a new one every :data:`RUN_SECONDS`."""
        if time.monotonic() - self._run_started >= RUN_SECONDS:
            self._run = RunState(gate=self._gate)
            self._run_started = time.monotonic()
        return self._run

    async def _listen(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        """Keep a session LISTENing on :data:`CHANNEL`; reconnect with backoff when it drops."""
        backoff = 0.5
        while not stop.is_set():
            try:
                async with self.db.listen(CHANNEL, application_name=APPLICATION_NAME) as session:
                    self.stats.listens += 1
                    self.listening.set()
                    backoff = 0.5
                    log.info("listening on %s", CHANNEL)
                    if ready is not None:
                        ready.set()
                    self.wake()  # whatever became due while nobody listened
                    while True:
                        for payload in await session.wait(timeout=60.0):
                            self.stats.notifications += 1
                            self.wake(_priority(payload))
            except (DatabaseUnavailable, DatabaseError) as exc:
                self.listening.clear()
                log.warning(
                    "cannot listen on %s (%s); polling every %.1f s, listening again in %.1f s",
                    CHANNEL,
                    exc,
                    self.options.poll_seconds,
                    backoff,
                )
                if ready is not None:
                    ready.set()  # polling works without notifications
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 30.0)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.heartbeat_seconds)
            if not stop.is_set():
                self.stats.heartbeats += 1
                self._emit("heartbeat", self.stats.summary())

    async def _release(self) -> None:
        """Give back the leases this deliverer still holds (see :func:`release_leases`)."""
        try:
            released = await release_leases(self.db, self.workers)
        except (DatabaseUnavailable, DatabaseError) as exc:
            log.warning("could not release leases (%s): they are rescued when they expire", exc)
            return
        self.stats.released = len(released)
        if released:
            log.warning("released %d leased events back to the queue", len(released))

    def _emit(self, what: str, payload: dict[str, Any]) -> None:
        if self.report is None:
            return
        try:
            self.report(what, payload)
        except Exception as exc:  # reporting never stops delivery
            log.warning("could not report %s: %s", what, exc)


def _priority(payload: str) -> int | None:
    """The best priority a notification names (None when it names none we can read)."""
    try:
        return int(json.loads(payload)["priority"])
    except (ValueError, KeyError, TypeError):
        return None


async def run_deliverer(
    *,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    options: DelivererOptions | None = None,
    database_url: str | None = None,
    settings: Settings | None = None,
    report: Report | None = None,
) -> DelivererStats:
    """Open the database (waiting with backoff while it is unreachable) and deliver until
    ``stop`` is set; returns what was done."""
    settings = settings or get_settings()
    options = options or DelivererOptions()
    size = options.concurrency + (1 if options.priority_lane is not None else 0) + 2
    backoff = 1.0
    while not stop.is_set():
        db = Database(
            database_url,
            settings=settings,
            min_size=1,
            max_size=size,
            application_name=APPLICATION_NAME,
        )
        try:
            await db.open()
        except DatabaseUnavailable as exc:
            log.warning("%s; trying again in %.0f s", exc, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        try:
            return await Deliverer(db, options, settings=settings, report=report).run(stop, ready)
        finally:
            await db.close()
    return DelivererStats()
