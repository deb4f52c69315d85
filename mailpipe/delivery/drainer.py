"""The drain loop: claim a batch, prepare it, route and send it, record it; again until done.

:func:`drain_queue` runs several :class:`Drainer` on one event loop (sharing a
:class:`~mailpipe.delivery.runs.RunState`) and can add what they record into a running total
(``tally``) that survives a failure, so a run retried by Prefect reports everything it did
(:mod:`~mailpipe.delivery.tasks`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailpipe.config import Settings, get_settings
from mailpipe.db import Database
from mailpipe.delivery.outcomes import RetryPolicy
from mailpipe.delivery.preparing import Job, prepare
from mailpipe.delivery.preview import build_event_message
from mailpipe.delivery.recording import BatchRecord, record_batch
from mailpipe.delivery.result import DrainResult, combine_results
from mailpipe.delivery.routing import Plan, Router
from mailpipe.delivery.runs import DrainStop, RunState
from mailpipe.errors import MailpipeError
from mailpipe.identity import process_name
from mailpipe.providers import Provider
from mailpipe.queue import claim_due_events, rescue_expired_leases
from mailpipe.templates import TemplateCache

log = logging.getLogger(__name__)


def worker_name() -> str:
    """A unique name for this drainer, shown in ``locked_by``: host, pid and a nonce."""
    return process_name(unique=True)


def _build(job: Job, provider: Provider) -> bytes:
    assert job.rendered is not None and job.recipient is not None
    return build_event_message(
        event_id=job.id,
        message_id=job.row["message_id"],
        template_key=job.row["template_key"],
        recipient=job.recipient,
        rendered=job.rendered,
        provider=provider,
    )


class Drainer:
    """Drains due events in batches; many drainers may run at once on one queue."""

    def __init__(
        self,
        db: Database,
        settings: Settings | None = None,
        *,
        worker: str | None = None,
        now: Callable[[], dt.datetime] | None = None,
        run: RunState | None = None,
        max_priority: int | None = None,
        keep_connections: bool = False,
    ) -> None:
        self.db = db
        # A priority lane claims only events of this priority or better (None: every event).
        self.max_priority = max_priority
        # A long-lived deliverer keeps its SMTP connections open between drains (warm);
        # a flow run's drainer closes them when its drain ends.
        self.keep_connections = keep_connections
        self.settings = settings or get_settings()
        self.worker = worker or worker_name()
        self.run = run or RunState()
        self.templates = TemplateCache()
        self.router = Router(db, self.settings, self.run, _build, RetryPolicy(self.settings))
        self._now = now or (lambda: dt.datetime.now(dt.UTC))

    async def drain(
        self,
        *,
        batch_size: int = 200,
        time_budget: float = 50.0,
        max_events: int | None = None,
        stop: asyncio.Event | None = None,
        tally: DrainResult | None = None,
        rescue: bool = True,
    ) -> DrainResult:
        """Process batches until the queue has nothing due, the budget is spent,
        ``max_events`` were claimed or ``stop`` is set (checked between batches, so the batch
        in hand is always recorded). Each recorded batch is also added to ``tally``. Closes
        its SMTP connections at the end unless ``keep_connections`` (then :meth:`close`).
        Starts by rescuing expired leases unless ``rescue`` is False (a deliverer woken many
        times a second rescues once per poll interval)."""
        result = DrainResult(self.worker)
        started = time.perf_counter()
        deadline = started + time_budget
        try:
            result.rescued = len(await rescue_expired_leases(self.db)) if rescue else 0
            if tally is not None:
                tally.rescued += result.rescued
            if result.rescued:
                log.warning("rescued %d events whose lease expired", result.rescued)
            claimed = 0
            while True:
                if stop is not None and stop.is_set():
                    result.stopped_by = "stopped"
                    break
                if time.perf_counter() >= deadline:
                    result.stopped_by = "time_budget"
                    break
                size = batch_size if max_events is None else min(batch_size, max_events - claimed)
                if size <= 0:
                    result.stopped_by = "max_events"
                    break
                batch = await self._claim_and_plan(size)
                if batch is None:
                    break
                claimed += batch.claimed
                record = batch.record
                await self.router.deliver(batch.plan, record, batch.now)
                await record_batch(self.db, record)
                for total in (result, tally):
                    if total is not None:
                        total.add_batch(record)
        finally:
            if not self.keep_connections:
                await self.router.close()
            result.elapsed_seconds = time.perf_counter() - started
        return result

    def start_run(self, run: RunState) -> None:
        """Drain as part of the run ``run`` from now on (a long-lived deliverer starts a run
        per drain, so a provider down in one is tried again in the next); the SMTP
        connections stay."""
        self.run = run
        self.router.run = run

    async def close(self) -> None:
        """Close the SMTP connections a ``keep_connections`` drainer kept open."""
        await self.router.close()

    async def _claim_and_plan(self, size: int) -> _Claimed | None:
        """Claim, prepare and reserve quotas for one batch, under the run's gate (see
        :class:`~mailpipe.delivery.runs.RunState`); None when nothing is due."""
        async with self.run.gate:
            rows = await claim_due_events(
                self.db,
                batch_size=size,
                lease_seconds=self.settings.lease_seconds,
                worker=self.worker,
                max_priority=self.max_priority,
            )
            if not rows:
                return None
            now = self._now()
            record = BatchRecord(self.worker)
            jobs = await prepare(self.db, self.templates, rows, record, now)
            plan = await self.router.plan(jobs, record, now)
        return _Claimed(len(rows), record, plan, now)


@dataclass(frozen=True)
class _Claimed:
    """A claimed batch, prepared, with its quotas reserved."""

    claimed: int
    record: BatchRecord
    plan: Plan
    now: dt.datetime


def split_max_events(max_events: int | None, parts: int) -> list[int | None]:
    """Share a run's ``max_events`` between drainers so that together they claim at most it."""
    if max_events is None:
        return [None] * parts
    return [max_events // parts + (1 if i < max_events % parts else 0) for i in range(parts)]


async def drain_queue(
    db: Database,
    *,
    batch_size: int = 200,
    time_budget: float = 50.0,
    concurrency: int = 1,
    max_events: int | None = None,
    settings: Settings | None = None,
    tally: DrainResult | None = None,
    run_id: str | None = None,
) -> DrainResult:
    """Run ``concurrency`` drainers on one event loop until the queue is drained or the
    budget is spent; returns their combined result.

    Every batch recorded is also added to ``tally`` as it is recorded, so a caller keeps
    the count of what was done even when this raises (a lost database connection, say).
    ``run_id`` names the run whose provider failures count once (default: a new one).
    """
    if batch_size < 1 or concurrency < 1 or time_budget <= 0:
        raise MailpipeError("batch_size and concurrency must be >= 1, time_budget > 0")
    started = time.perf_counter()
    shares = split_max_events(max_events, concurrency)
    run = RunState(id=run_id) if run_id else RunState()
    drainers = [Drainer(db, settings, run=run) for _ in range(concurrency)]
    stop = DrainStop()

    async def drain(drainer: Drainer, share: int | None) -> DrainResult:
        try:
            return await drainer.drain(
                batch_size=batch_size,
                time_budget=time_budget,
                max_events=share,
                stop=stop,
                tally=tally,
            )
        except BaseException:
            stop.set()
            raise

    # When one drainer fails (its database connection was lost, say), the others record the
    # batch they hold and stop, instead of being cut off mid-batch when the caller closes the
    # pool (their sent-but-unrecorded messages would go out again after the lease expires).
    try:
        outcomes = await asyncio.gather(
            *(drain(d, n) for d, n in zip(drainers, shares, strict=True)),
            return_exceptions=True,
        )
    finally:
        if tally is not None:
            tally.elapsed_seconds += time.perf_counter() - started
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise failures[0]
    result = combine_results([o for o in outcomes if isinstance(o, DrainResult)])
    if tally is not None:
        tally.stopped_by = result.stopped_by
    return result
