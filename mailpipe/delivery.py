"""The delivery engine behind ``process_email_queue``: claim, render, send, confirm, retry.

One :class:`Drainer` drains the queue in batches until it is empty or its time budget is spent.
Per batch: one claim (``FOR UPDATE SKIP LOCKED`` under a lease), one template and one
suppression lookup, one quota reservation per provider, then plain asyncio sends over a few
persistent SMTP connections per provider, then one transaction that records every outcome.
Nothing here knows about Prefect.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiosmtplib

from mailpipe import ratelimits
from mailpipe.config import Settings, get_settings
from mailpipe.db import Database, Row
from mailpipe.errors import MailpipeError
from mailpipe.messages import (
    InvalidMessage,
    Recipient,
    build_message,
    sender_address,
    validate_recipient,
)
from mailpipe.providers import (
    CredentialsError,
    Provider,
    load_providers,
    record_provider_failure,
    record_provider_success,
    resolve_password,
    usable_providers,
)
from mailpipe.queries import query
from mailpipe.queue import claim_due_events, rescue_expired_leases
from mailpipe.smtp import (
    Failure,
    SMTPFailure,
    classify,
    close_quietly,
    open_connection,
    send_message,
)
from mailpipe.suppressions import find_suppressed
from mailpipe.templates import Rendered, TemplateCache, TemplateProblem

log = logging.getLogger(__name__)

OUTCOMES = ("sent", "retried", "failed", "deferred", "suppressed")


@dataclass
class Job:
    """One claimed event on its way through a batch."""

    row: Row
    recipient: Recipient | None = None
    rendered: Rendered | None = None
    tried: set[str] = field(default_factory=set)
    last_failure: Failure | None = None

    @property
    def id(self) -> int:
        return int(self.row["id"])


@dataclass(frozen=True)
class Accepted:
    """The provider answered 250 to DATA."""

    provider: str
    code: int
    reply: str
    at: dt.datetime


@dataclass
class DrainResult:
    """What one drain did: counts per outcome and where time went."""

    worker: str
    counts: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    rescued: int = 0
    elapsed_seconds: float = 0.0
    stopped_by: str = "empty"  # empty, time_budget, max_events, stopped (a sibling failed)
    by_provider: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """Counts for logs, artifacts and the CLI."""
        return {
            **{o: self.counts.get(o, 0) for o in OUTCOMES},
            "rescued": self.rescued,
            "batches": self.batches,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "rate_per_second": round(self.counts.get("sent", 0) / self.elapsed_seconds, 1)
            if self.elapsed_seconds
            else 0.0,
            "stopped_by": self.stopped_by,
            "by_provider": dict(self.by_provider),
        }

    def merge(self, other: DrainResult) -> None:
        """Add another drainer's result (several drainers in one run)."""
        self.counts.update(other.counts)
        self.batches += other.batches
        self.rescued += other.rescued
        self.by_provider.update(other.by_provider)
        self.elapsed_seconds = max(self.elapsed_seconds, other.elapsed_seconds)


def worker_name() -> str:
    """A unique name for this drainer, shown in ``locked_by``: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class ProviderSender:
    """Persistent SMTP connections to one provider, one message in flight per connection."""

    def __init__(self, provider: Provider, settings: Settings) -> None:
        self.provider = provider
        self.settings = settings
        self._idle: list[aiosmtplib.SMTP] = []
        self._password: str | None = None
        self._password_loaded = False
        self.down: Failure | None = None  # set when the provider failed for this run
        self.down_recorded = False
        self.sent = 0
        self.failures_in_a_row = 0

    async def _connect(self) -> aiosmtplib.SMTP:
        if not self._password_loaded:
            try:
                self._password = await resolve_password(self.provider)
            except CredentialsError as exc:
                raise SMTPFailure(classify(exc, stage="connect")) from None
            self._password_loaded = True
        return await open_connection(self.provider, self._password, self.settings)

    async def send_all(
        self, jobs: list[Job], build: Callable[[Job, Provider], bytes]
    ) -> list[tuple[Job, Accepted | Failure]]:
        """Send ``jobs`` over up to ``max_connections`` connections; one result per job."""
        pending = deque(jobs)
        results: list[tuple[Job, Accepted | Failure]] = []
        name = self.provider.name

        async def connection_loop() -> None:
            client: aiosmtplib.SMTP | None = self._idle.pop() if self._idle else None
            reused = client is not None
            while pending and self.down is None:
                job = pending.popleft()
                try:
                    data = build(job, self.provider)
                    envelope_sender = self.envelope_sender(job)
                except Exception as exc:
                    # Whatever is wrong with one message fails that message, not the batch.
                    reason = (
                        str(exc)
                        if isinstance(exc, InvalidMessage)
                        else f"cannot build the message: {type(exc).__name__}: {exc}"
                    )
                    results.append(
                        (job, Failure("smtp_error", reason, transient=False, stage="build"))
                    )
                    continue
                for attempt in (1, 2):
                    if client is None:
                        try:
                            client = await self._connect()
                            reused = False
                        except SMTPFailure as exc:
                            self.down = exc.failure
                            results.append((job, exc.failure))
                            return
                    try:
                        assert job.recipient is not None and job.rendered is not None
                        code, reply = await send_message(
                            client,
                            envelope_sender,
                            job.recipient.address,
                            data,
                            smtputf8=job.recipient.smtputf8,
                        )
                    except SMTPFailure as exc:
                        failure = exc.failure
                        if failure.provider_level:
                            await close_quietly(client)
                            client = None
                            # A kept-alive connection the server closed while idle: reconnect
                            # once; the message was not sent (nothing reached DATA).
                            if reused and attempt == 1 and failure.stage == "mail":
                                continue
                            self.failures_in_a_row += 1
                            if self.failures_in_a_row >= self.settings.provider_failure_threshold:
                                self.down = failure
                        results.append((job, failure))
                    else:
                        self.failures_in_a_row = 0
                        self.sent += 1
                        results.append((job, Accepted(name, code, reply, dt.datetime.now(dt.UTC))))
                    break
            if client is not None:
                self._idle.append(client)

        workers = min(self.provider.max_connections, len(jobs))
        await asyncio.gather(*(connection_loop() for _ in range(workers)))
        # Jobs this provider never got to (it went down): hand them back for failover. They
        # were never sent, so the failure that took the provider down must not pass on its
        # ambiguity (a drop after DATA of another message would mark them possible duplicates
        # and retry them later instead of failing them over now).
        if pending:
            assert self.down is not None
            untried = replace(
                self.down,
                ambiguous=False,
                provider_level=True,
                message=f"not attempted: {name} was taken out of this run "
                f"after {self.down.message}",
            )
            results += [(job, untried) for job in pending]
        return results

    def envelope_sender(self, job: Job) -> str:
        """MAIL FROM for the job: the template's from address, else the provider's."""
        assert job.rendered is not None
        return sender_address(job.rendered.from_address or self.provider.from_address or "")

    async def close(self) -> None:
        """QUIT every idle connection."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(close_quietly(c) for c in idle))


@dataclass
class _Batch:
    """Outcome columns of one batch, written in one transaction."""

    worker: str
    ids: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    scheduled_at: list[dt.datetime | None] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    last_errors: list[str | None] = field(default_factory=list)
    error_classes: list[str | None] = field(default_factory=list)
    providers: list[str | None] = field(default_factory=list)
    sent_at: list[dt.datetime | None] = field(default_factory=list)
    duplicates: list[bool] = field(default_factory=list)
    confirmations: list[tuple[Any, ...]] = field(default_factory=list)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    bounces: list[str] = field(default_factory=list)
    deferrals: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)

    def finish(
        self,
        job: Job,
        status: str,
        *,
        outcome: str,
        scheduled_at: dt.datetime | None = None,
        retried: int = 0,
        error: str | None = None,
        error_class: str | None = None,
        provider: str | None = None,
        sent_at: dt.datetime | None = None,
        duplicate: bool = False,
    ) -> None:
        self.ids.append(job.id)
        self.statuses.append(status)
        self.scheduled_at.append(scheduled_at)
        self.retried.append(retried)
        self.last_errors.append(error[:2000] if error else None)
        self.error_classes.append(error_class)
        self.providers.append(provider)
        self.sent_at.append(sent_at)
        self.duplicates.append(duplicate)
        self.counts[outcome] += 1

    def attempt(
        self,
        job: Job,
        outcome: str,
        provider: str | None,
        code: int | None,
        error: str | None,
        at: dt.datetime,
    ) -> None:
        self.attempts.append((job.id, provider, outcome, code, (error or "")[:2000], at))


class Drainer:
    """Drains due events in batches; many drainers may run at once on one queue."""

    def __init__(
        self,
        db: Database,
        settings: Settings | None = None,
        *,
        worker: str | None = None,
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings or get_settings()
        self.worker = worker or worker_name()
        self.templates = TemplateCache()
        self.senders: dict[str, ProviderSender] = {}
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._random = random.Random()
        self._retired: list[ProviderSender] = []

    async def drain(
        self,
        *,
        batch_size: int = 200,
        time_budget: float = 50.0,
        max_events: int | None = None,
        stop: asyncio.Event | None = None,
    ) -> DrainResult:
        """Process batches until the queue has nothing due, the budget is spent,
        ``max_events`` were claimed or ``stop`` is set (checked between batches, so the batch
        in hand is always recorded). Always closes its SMTP connections."""
        result = DrainResult(self.worker)
        started = time.perf_counter()
        deadline = started + time_budget
        try:
            result.rescued = len(await rescue_expired_leases(self.db))
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
                rows = await claim_due_events(
                    self.db,
                    batch_size=size,
                    lease_seconds=self.settings.lease_seconds,
                    worker=self.worker,
                )
                if not rows:
                    break
                claimed += len(rows)
                batch = await self.process(rows)
                result.counts.update(batch.counts)
                for conf in batch.confirmations:
                    result.by_provider[conf[1]] += 1
                result.batches += 1
        finally:
            await asyncio.gather(*(s.close() for s in [*self.senders.values(), *self._retired]))
            result.elapsed_seconds = time.perf_counter() - started
        return result

    async def process(self, rows: list[Row]) -> _Batch:
        """Deliver one claimed batch and record every outcome."""
        now = self._now()
        batch = _Batch(self.worker)
        jobs = [Job(r) for r in rows]
        await self.templates.load(
            self.db, {str(j.row["template_key"]) for j in jobs if j.row["template_key"]}
        )
        ready = self._prepare(jobs, batch, now)
        suppressed = await find_suppressed(
            self.db, [j.recipient.address for j in ready if j.recipient]
        )
        if suppressed:
            still = []
            for job in ready:
                assert job.recipient is not None
                reason = suppressed.get(job.recipient.address.lower())
                if reason:
                    error = f"recipient suppressed: {reason}"
                    batch.finish(
                        job,
                        "suppressed",
                        outcome="suppressed",
                        error=error,
                        error_class="suppressed",
                    )
                    batch.attempt(job, "suppressed", None, None, error, now)
                else:
                    still.append(job)
            ready = still
        ready = await self._apply_domain_limits(ready, batch, now)
        if ready:
            await self._send(ready, batch, now)
        await self._record(batch)
        return batch

    def _prepare(self, jobs: list[Job], batch: _Batch, now: dt.datetime) -> list[Job]:
        """Validate and render; a bad event fails with a reason, the batch goes on."""
        ready = []
        for job in jobs:
            row = job.row
            try:
                job.recipient = validate_recipient(row["recipient_email"] or "")
            except InvalidMessage as exc:
                batch.finish(job, "failed", outcome="failed", error=str(exc), error_class="invalid")
                continue
            try:
                template = self.templates.get(row["template_key"] or "")
                job.rendered = template.render(row["payload"])
            except TemplateProblem as exc:
                batch.finish(
                    job, "failed", outcome="failed", error=str(exc), error_class="template"
                )
                continue
            ready.append(job)
        return ready

    async def _apply_domain_limits(
        self, jobs: list[Job], batch: _Batch, now: dt.datetime
    ) -> list[Job]:
        limits = self.settings.domain_limits
        if not limits:
            return jobs
        by_domain: dict[str, list[Job]] = {}
        for job in jobs:
            assert job.recipient is not None
            by_domain.setdefault(job.recipient.domain, []).append(job)
        allowed: list[Job] = []
        for domain, group in by_domain.items():
            limit = limits.get(domain)
            if limit is None:
                allowed += group
                continue
            granted = await ratelimits.reserve(
                self.db, "domain", domain, {"minute": limit}, len(group)
            )
            allowed += group[:granted]
            for job in group[granted:]:
                self._defer(
                    job,
                    batch,
                    now,
                    "domain",
                    domain,
                    {"minute": limit},
                    f"rate limited: {domain} allows {limit}/minute",
                )
        return allowed

    def _defer(
        self,
        job: Job,
        batch: _Batch,
        now: dt.datetime,
        scope: str,
        key: str,
        limits: dict[str, int],
        reason: str,
    ) -> None:
        """Back to the queue until the limited window ends; not a retry, never a failure."""
        until = ratelimits.next_window_start(limits, now)
        error = f"{reason}; deferred to {until:%H:%M:%S}Z"
        provider = key if scope == "provider" else None
        batch.finish(
            job, "queued", outcome="deferred", scheduled_at=until, error=error, provider=provider
        )
        batch.attempt(job, "deferred", provider, None, error, now)
        batch.deferrals[(scope, key, next(w for w in ratelimits.WINDOWS if w in limits))] += 1

    def _sender(self, provider: Provider) -> ProviderSender:
        """The provider's sender, kept across batches while its connection settings hold."""
        sender = self.senders.get(provider.name)
        if sender is not None and _connection_key(sender.provider) == _connection_key(provider):
            sender.provider = provider  # fresh limits, status and score; same connections
            return sender
        if sender is not None:
            self._retired.append(sender)
        sender = self.senders[provider.name] = ProviderSender(provider, self.settings)
        return sender

    async def _send(self, jobs: list[Job], batch: _Batch, now: dt.datetime) -> None:
        """Assign jobs to providers within quota, send, fail over provider-level failures."""
        providers = usable_providers(await load_providers(self.db), now)
        pending = jobs
        limited: list[Provider] = []  # providers that refused part of the batch for quota
        while pending:
            candidates = [
                p
                for p in providers
                if self._sender(p).down is None and not all(p.name in j.tried for j in pending)
            ]
            if not candidates:
                break
            assignments: list[tuple[ProviderSender, list[Job]]] = []
            rest = pending
            for provider in candidates:
                mine = [j for j in rest if provider.name not in j.tried]
                if not mine:
                    continue
                granted = await ratelimits.reserve(
                    self.db, "provider", provider.name, provider.limits, len(mine)
                )
                if granted < len(mine) and provider not in limited:
                    limited.append(provider)
                taken = mine[:granted]
                taken_ids = {id(j) for j in taken}
                for job in taken:
                    job.tried.add(provider.name)
                assignments.append((self._sender(provider), taken))
                rest = [j for j in rest if id(j) not in taken_ids]
                if not rest:
                    break
            if not assignments or not any(group for _, group in assignments):
                break
            results = await asyncio.gather(
                *(sender.send_all(group, self._build) for sender, group in assignments if group)
            )
            pending = rest
            failover: list[Job] = []
            for sender, outcomes in zip([s for s, g in assignments if g], results, strict=True):
                await self._note_provider_health(sender)
                for job, outcome in outcomes:
                    if isinstance(outcome, Accepted):
                        self._sent(job, outcome, batch)
                    elif outcome.provider_level and not outcome.ambiguous:
                        job.last_failure = outcome
                        batch.attempt(
                            job,
                            "failover",
                            sender.provider.name,
                            outcome.code,
                            outcome.message,
                            now,
                        )
                        failover.append(job)
                    else:
                        self._failed(job, outcome, sender.provider.name, batch, now)
            pending = failover + pending
            if not failover:
                break
        for job in pending:
            if job.last_failure is not None:
                # Every provider failed at connection level: retry later.
                self._failed(job, job.last_failure, None, batch, now)
            elif limited:
                first = limited[0]
                self._defer(
                    job,
                    batch,
                    now,
                    "provider",
                    first.name,
                    first.limits,
                    f"rate limited: every usable provider is at its limit "
                    f"({first.name}: {first.limits})",
                )
            else:
                error = "no usable SMTP provider (all disabled or suspended)"
                retry_at = now + dt.timedelta(seconds=self.settings.retry_base_seconds)
                batch.finish(
                    job,
                    "queued",
                    outcome="deferred",
                    scheduled_at=retry_at,
                    error=error,
                    error_class="no_provider",
                )
                batch.attempt(job, "deferred", None, None, error, now)

    async def _note_provider_health(self, sender: ProviderSender) -> None:
        name = sender.provider.name
        if sender.down is not None and not sender.down_recorded:
            sender.down_recorded = True  # count one failure per provider per run
            row = await record_provider_failure(self.db, name, self.settings)
            log.warning(
                "provider %s failed (%s): %s; failing over%s",
                name,
                sender.down.kind,
                sender.down.message,
                f"; suspended until {row['suspended_until']}"
                if row and row["status"] == "suspended"
                else "",
            )
        elif sender.sent and (
            sender.provider.consecutive_failures or sender.provider.status == "suspended"
        ):
            await record_provider_success(self.db, name)

    def _build(self, job: Job, provider: Provider) -> bytes:
        assert job.rendered is not None and job.recipient is not None
        return build_event_message(
            event_id=job.id,
            message_id=job.row["message_id"],
            template_key=job.row["template_key"],
            recipient=job.recipient,
            rendered=job.rendered,
            provider=provider,
        )

    def _sent(self, job: Job, accepted: Accepted, batch: _Batch) -> None:
        duplicate = bool(job.row["may_be_duplicate"])
        batch.finish(job, "sent", outcome="sent", provider=accepted.provider, sent_at=accepted.at)
        assert job.recipient is not None
        batch.confirmations.append(
            (
                job.id,
                accepted.provider,
                job.row["message_id"],
                job.recipient.address,
                "accepted",
                accepted.code,
                accepted.reply[:1000],
                duplicate,
                accepted.at,
            )
        )

    def _failed(
        self, job: Job, failure: Failure, provider: str | None, batch: _Batch, now: dt.datetime
    ) -> None:
        retry_count = int(job.row["retry_count"])
        if failure.stage == "build":
            batch.finish(
                job,
                "failed",
                outcome="failed",
                error=failure.message,
                error_class="invalid",
                provider=provider,
            )
            batch.attempt(job, "failed", provider, None, failure.message, now)
            return
        if not failure.transient:
            bounced = failure.stage == "rcpt"
            error_class = "bounced" if bounced else "rejected"
            batch.finish(
                job,
                "failed",
                outcome="failed",
                error=failure.message,
                error_class=error_class,
                provider=provider,
            )
            batch.attempt(
                job,
                "bounced" if bounced else "failed",
                provider,
                failure.code,
                failure.message,
                now,
            )
            if bounced and job.recipient is not None:
                batch.bounces.append(job.recipient.address.lower())
            return
        if retry_count + 1 > self.settings.max_retries:
            error = f"gave up after {retry_count + 1} attempts: {failure.message}"
            batch.finish(
                job,
                "failed",
                outcome="failed",
                error=error,
                error_class="retries_exhausted",
                provider=provider,
                retried=1,
                duplicate=failure.ambiguous,
            )
            batch.attempt(job, "failed", provider, failure.code, failure.message, now)
            return
        delay = min(
            self.settings.retry_base_seconds * 2**retry_count, self.settings.retry_max_seconds
        )
        delay *= 0.5 + self._random.random() / 2  # jitter: spread retries of one outage
        error = failure.message
        if failure.ambiguous:
            error = f"{error} (the provider may have accepted it: possible duplicate)"
        batch.finish(
            job,
            "queued",
            outcome="retried",
            retried=1,
            scheduled_at=now + dt.timedelta(seconds=delay),
            error=error,
            error_class="transient",
            provider=provider,
            duplicate=failure.ambiguous,
        )
        batch.attempt(job, "retry", provider, failure.code, error, now)

    async def _record(self, batch: _Batch) -> None:
        """Every outcome of the batch in one transaction (a handful of statements)."""
        if not batch.ids:
            return
        async with self.db.transaction() as tx:
            updated = await tx.fetch_all(
                query("finish_events"),
                {
                    "ids": batch.ids,
                    "statuses": batch.statuses,
                    "scheduled_at": batch.scheduled_at,
                    "retried": batch.retried,
                    "last_errors": batch.last_errors,
                    "error_classes": batch.error_classes,
                    "providers": batch.providers,
                    "sent_at": batch.sent_at,
                    "duplicates": batch.duplicates,
                    "worker": self.worker,
                },
            )
            if batch.confirmations:
                columns = list(zip(*batch.confirmations, strict=True))
                await tx.execute(
                    query("insert_confirmations"),
                    {
                        "ids": list(columns[0]),
                        "providers": list(columns[1]),
                        "message_ids": list(columns[2]),
                        "recipients": list(columns[3]),
                        "statuses": list(columns[4]),
                        "codes": list(columns[5]),
                        "responses": list(columns[6]),
                        "duplicates": list(columns[7]),
                        "at": list(columns[8]),
                    },
                )
            if batch.attempts:
                columns = list(zip(*batch.attempts, strict=True))
                await tx.execute(
                    query("insert_attempts"),
                    {
                        "ids": list(columns[0]),
                        "providers": list(columns[1]),
                        "outcomes": list(columns[2]),
                        "codes": list(columns[3]),
                        "errors": list(columns[4]),
                        "at": list(columns[5]),
                    },
                )
            if batch.deferrals:
                await tx.execute_many(
                    query("count_deferrals"),
                    [
                        {"scope": scope, "key": key, "window": window, "deferred": n}
                        for (scope, key, window), n in sorted(batch.deferrals.items())
                    ],
                )
            if batch.bounces:
                await tx.execute(
                    query("add_suppressions"),
                    {
                        "addresses": batch.bounces,
                        "kinds": ["address"] * len(batch.bounces),
                        "reasons": ["hard_bounce"] * len(batch.bounces),
                        "sources": ["smtp 5xx on RCPT"] * len(batch.bounces),
                        "expires_at": [None] * len(batch.bounces),
                    },
                )
        if len(updated) != len(batch.ids):
            log.warning(
                "%d events of the batch were re-claimed by another worker after our "
                "lease expired; their outcome here was not recorded",
                len(batch.ids) - len(updated),
            )


def _connection_key(provider: Provider) -> tuple[Any, ...]:
    return (
        provider.host,
        provider.port,
        provider.tls_mode,
        provider.username,
        str(provider.credentials),
        provider.timeout_seconds,
        provider.max_connections,
    )


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
) -> DrainResult:
    """Run ``concurrency`` drainers on one event loop until the queue is drained or the
    budget is spent; returns their combined result."""
    if batch_size < 1 or concurrency < 1 or time_budget <= 0:
        raise MailpipeError("batch_size and concurrency must be >= 1, time_budget > 0")
    shares = split_max_events(max_events, concurrency)
    drainers = [Drainer(db, settings) for _ in range(concurrency)]
    stop = asyncio.Event()

    async def drain(drainer: Drainer, share: int | None) -> DrainResult:
        try:
            return await drainer.drain(
                batch_size=batch_size, time_budget=time_budget, max_events=share, stop=stop
            )
        except BaseException:
            stop.set()
            raise

    # When one drainer fails (its database connection was lost, say), the others record the
    # batch they hold and stop, instead of being cut off mid-batch when the caller closes the
    # pool (their sent-but-unrecorded messages would go out again after the lease expires).
    outcomes = await asyncio.gather(
        *(drain(d, n) for d, n in zip(drainers, shares, strict=True)), return_exceptions=True
    )
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise failures[0]
    return _combined([o for o in outcomes if isinstance(o, DrainResult)])


def build_event_message(
    *,
    event_id: int | str,
    message_id: str,
    template_key: str,
    recipient: Recipient,
    rendered: Rendered,
    provider: Provider | None,
) -> bytes:
    """The bytes ``process_email_queue`` hands to SMTP for one event sent via ``provider``.

    From is the template's from address, else the provider's; the event id goes in the
    ``X-Mailpipe-Event`` header. ``mailpipe template render`` previews through this same
    function, so a preview differs from the sent message only in its Date header.
    """
    sender = rendered.from_address or (provider.from_address if provider else None)
    if not sender:
        where = (
            f"provider {provider.name!r}"
            if provider
            else "a provider (`mailpipe provider add ... --from ADDRESS`)"
        )
        raise InvalidMessage(f"no from address: set one on template {template_key!r} or on {where}")
    return build_message(
        sender=sender,
        recipient=recipient,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id,
        headers={"X-Mailpipe-Event": str(event_id)},
    )


PREVIEW_RECIPIENT = "recipient@example.com"


@dataclass(frozen=True)
class Preview:
    """A message as ``process_email_queue`` would send it now (only Date will differ)."""

    template_key: str
    version: int
    provider: str | None  # the provider it would go through (None: none usable)
    recipient: str
    message_id: str
    event_id: str  # the X-Mailpipe-Event header ("preview" without an event)
    rendered: Rendered
    message: bytes


async def preview_message(
    db: Database,
    template_key: str | None = None,
    data: Any = None,
    *,
    recipient: str | None = None,
    event_id: int | None = None,
    provider_name: str | None = None,
    version: int | None = None,
) -> Preview:
    """Render and build a message exactly as the flow would, without sending or writing.

    Same template lookup and sandboxed render, same recipient validation, same provider
    choice (the best usable one unless ``provider_name``) and :func:`build_event_message`.
    With ``event_id`` the event's template, recipient, payload and Message-ID are used
    (arguments override them). Failures raise what the flow would record on the event:
    :class:`TemplateProblem` or :class:`InvalidMessage`, with the same message.
    """
    from mailpipe.providers import UnknownProvider
    from mailpipe.templates import CompiledTemplate, UnknownTemplate

    domain = await db.fetch_value(query("admin_message_id_domain"))
    message_id = f"<preview@{domain}>"
    header_id = "preview"
    if event_id is not None:
        event = await db.fetch_one(query("admin_preview_event"), (event_id,))
        if event is None:
            raise MailpipeError(f"no event {event_id}: see `mailpipe queue list`")
        template_key = template_key or event["template_key"] or ""
        data = event["payload"] if data is None else data
        recipient = recipient or event["recipient_email"] or ""
        message_id, header_id = event["message_id"], str(event_id)
    if not template_key:
        raise MailpipeError("which template? give a template key or --event ID")
    if version is None:
        cache = TemplateCache()
        await cache.load(db, {template_key})
        template = cache.get(template_key)
    else:
        row = await db.fetch_one(query("admin_template_version"), (template_key, version))
        if row is None:
            raise UnknownTemplate(
                f"template {template_key!r} has no version {version}: see "
                f"`mailpipe template show {template_key}`"
            )
        template = CompiledTemplate.from_row(row)
    to = validate_recipient(recipient if recipient is not None else PREVIEW_RECIPIENT)
    rendered = template.render({} if data is None else data)
    providers = await load_providers(db)
    if provider_name is not None:
        chosen = next((p for p in providers if p.name == provider_name), None)
        if chosen is None:
            raise UnknownProvider(
                f"no provider named {provider_name!r}: see `mailpipe provider list`"
            )
    else:
        usable = usable_providers(providers, dt.datetime.now(dt.UTC))
        chosen = usable[0] if usable else None
    message = build_event_message(
        event_id=header_id,
        message_id=message_id,
        template_key=template_key,
        recipient=to,
        rendered=rendered,
        provider=chosen,
    )
    return Preview(
        template_key,
        template.version,
        chosen.name if chosen else None,
        to.address,
        message_id,
        header_id,
        rendered,
        message,
    )


def _drain_process(
    url: str, batch_size: int, concurrency: int, time_budget: float, max_events: int | None
) -> DrainResult:
    """Entry point of one drainer process: its own event loop and connection pool."""

    async def go() -> DrainResult:
        async with Database(url, min_size=1, max_size=concurrency + 2) as db:
            return await drain_queue(
                db,
                batch_size=batch_size,
                concurrency=concurrency,
                time_budget=time_budget,
                max_events=max_events,
            )

    return asyncio.run(go())  # a plain dataclass: pickled back to the parent


def drain_in_processes(
    url: str,
    *,
    processes: int,
    batch_size: int = 200,
    concurrency: int = 1,
    time_budget: float = 50.0,
    max_events: int | None = None,
) -> DrainResult:
    """Drain with ``processes`` OS processes, to use every core (one Python process tops out
    at one core of SMTP and MIME work). The queue's SKIP LOCKED claims keep them apart."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if processes < 1:
        raise MailpipeError("processes must be >= 1")
    shares = split_max_events(max_events, processes)
    context = multiprocessing.get_context("spawn")  # no inherited sockets, locks or loops
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [
            pool.submit(_drain_process, url, batch_size, concurrency, time_budget, share)
            for share in shares
        ]
        return _combined([f.result() for f in futures])


def _combined(results: list[DrainResult]) -> DrainResult:
    """One result for drainers that ran side by side (tasks or processes)."""
    total = DrainResult(worker=",".join(r.worker for r in results))
    for r in results:
        total.merge(r)
    total.stopped_by = results[0].stopped_by
    return total
