"""Routing a prepared batch: domain and provider quotas, sending, failover between providers.

:meth:`Router.plan` reserves quotas (under the run's gate, so in claim order);
:meth:`Router.deliver` sends each provider's share over its :class:`~mailpipe.smtp.ConnectionPool`,
moves what a failing provider could not take to the next one, and finishes every job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mailpipe import ratelimits
from mailpipe.config import Settings
from mailpipe.db import Database
from mailpipe.delivery import outcomes
from mailpipe.delivery.outcomes import RetryPolicy
from mailpipe.delivery.preparing import Job
from mailpipe.delivery.recording import BatchRecord
from mailpipe.delivery.runs import RunState
from mailpipe.errors import MailpipeError
from mailpipe.messages import InvalidMessage, sender_address
from mailpipe.providers import (
    Provider,
    load_providers,
    record_provider_failure,
    record_provider_success,
    usable_providers,
)
from mailpipe.smtp import Accepted, ConnectionPool, SMTPError, connection_key, not_attempted

log = logging.getLogger(__name__)

Build = Callable[[Job, Provider], bytes]
Result = Accepted | MailpipeError


@dataclass
class Plan:
    """Which jobs go to which provider in the next round, and what quotas held back."""

    providers: list[Provider]
    assignments: list[tuple[ConnectionPool, list[Job]]] = field(default_factory=list)
    rest: list[Job] = field(default_factory=list)  # no provider took them this round
    limited: list[Provider] = field(default_factory=list)  # refused part of it for quota


class Router:
    """One drainer's providers: their connection pools and the quotas they may use."""

    def __init__(
        self, db: Database, settings: Settings, run: RunState, build: Build, policy: RetryPolicy
    ) -> None:
        self.db = db
        self.settings = settings
        self.run = run
        self.build = build
        self.policy = policy
        self.pools: dict[str, ConnectionPool] = {}
        self._retired: list[ConnectionPool] = []

    async def close(self) -> None:
        """Close every pooled connection."""
        pools = [*self.pools.values(), *self._retired]
        self._retired = []  # kept pools can be used again; retired ones are gone for good
        await asyncio.gather(*(p.close() for p in pools))

    def _pool(self, provider: Provider) -> ConnectionPool:
        """The provider's pool, kept across batches while its connection settings hold."""
        pool = self.pools.get(provider.name)
        if pool is not None and connection_key(pool.provider) == connection_key(provider):
            pool.provider = provider  # fresh limits, status and score; same connections
            return pool
        if pool is not None:
            self._retired.append(pool)
        pool = self.pools[provider.name] = ConnectionPool(provider, self.settings)
        return pool

    async def plan(self, jobs: list[Job], record: BatchRecord, now: dt.datetime) -> Plan:
        """Take domain and provider quotas for ``jobs`` (in their order: best priority
        first); jobs a domain limit holds back are finished as deferred."""
        providers = usable_providers(await load_providers(self.db), now)
        jobs = await self._apply_domain_limits(jobs, record, now)
        plan = Plan(providers)
        await self._assign(plan, jobs)
        return plan

    async def _assign(self, plan: Plan, pending: list[Job]) -> None:
        """Give each provider in failover order as many of ``pending`` as its quota allows."""
        plan.assignments, plan.rest = [], pending
        for provider in plan.providers:
            if provider.name in self.run.down:
                continue
            mine = [j for j in plan.rest if provider.name not in j.tried]
            if not mine:
                continue
            granted = await ratelimits.reserve(
                self.db, "provider", provider.name, provider.limits, len(mine)
            )
            if granted < len(mine) and provider not in plan.limited:
                plan.limited.append(provider)
            taken = mine[:granted]
            if not taken:
                continue
            for job in taken:
                job.tried.append(provider.name)
            plan.assignments.append((self._pool(provider), taken))
            taken_ids = {id(j) for j in taken}
            plan.rest = [j for j in plan.rest if id(j) not in taken_ids]
            if not plan.rest:
                break

    async def deliver(self, plan: Plan, record: BatchRecord, now: dt.datetime) -> None:
        """Send the planned rounds, failing over provider-level failures; finish every job."""
        while plan.assignments:
            groups = plan.assignments
            results = await asyncio.gather(*(self._send_group(p, jobs) for p, jobs in groups))
            failover: list[Job] = []
            for (pool, _), sent in zip(groups, results, strict=True):
                await self._note_health(pool)
                for job, result in sent:
                    if isinstance(result, Accepted):
                        record.finish(job, outcomes.sent(result), now)
                        record.confirm(
                            job,
                            result.provider,
                            result.code,
                            result.reply,
                            result.at,
                            provider_message_id=result.provider_message_id,
                        )
                    elif (
                        isinstance(result, SMTPError)
                        and result.provider_level
                        and not result.ambiguous
                    ):
                        job.last_error = result
                        record.attempt(job, "failover", pool.name, result.code, str(result), now)
                        failover.append(job)
                    else:
                        outcome = self.policy.after_failure(
                            result,
                            retry_count=int(job.row["retry_count"]),
                            provider=pool.name,
                            now=now,
                        )
                        record.finish(job, outcome, now)
            if not failover:
                break
            await self._assign(plan, failover + plan.rest)
        for job in plan.rest:
            record.finish(job, self._unsent(job, plan, record, now), now)

    def _unsent(
        self, job: Job, plan: Plan, record: BatchRecord, now: dt.datetime
    ) -> outcomes.Outcome:
        """The outcome of a job no provider accepted or rejected."""
        if job.last_error is not None:
            # Every provider it went to failed at connection level: retry later, recorded
            # against the last provider tried.
            return self.policy.after_failure(
                job.last_error,
                retry_count=int(job.row["retry_count"]),
                provider=job.last_provider,
                now=now,
            )
        if plan.limited:
            first = plan.limited[0]
            return self._deferred(
                record,
                "provider",
                first.name,
                first.limits,
                f"rate limited: every usable provider is at its limit "
                f"({first.name}: {first.limits})",
                now,
            )
        return outcomes.deferred(
            "no usable SMTP provider (all disabled or suspended)",
            now + dt.timedelta(seconds=self.settings.retry_base_seconds),
            error_class="no_provider",
        )

    @staticmethod
    def _deferred(
        record: BatchRecord,
        scope: str,
        key: str,
        limits: dict[str, int],
        reason: str,
        now: dt.datetime,
    ) -> outcomes.Outcome:
        """Back to the queue until the limited window ends (counted in its counter row)."""
        until = ratelimits.next_window_start(limits, now)
        record.deferrals[(scope, key, next(w for w in ratelimits.WINDOWS if w in limits))] += 1
        return outcomes.deferred(
            f"{reason}; deferred to {until:%H:%M:%S}Z",
            until,
            provider=key if scope == "provider" else None,
        )

    async def _apply_domain_limits(
        self, jobs: list[Job], record: BatchRecord, now: dt.datetime
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
            window = {"minute": limit}
            granted = await ratelimits.reserve(self.db, "domain", domain, window, len(group))
            allowed += group[:granted]
            for job in group[granted:]:
                reason = f"rate limited: {domain} allows {limit}/minute"
                outcome = self._deferred(record, "domain", domain, window, reason, now)
                record.finish(job, outcome, now)
        return allowed

    async def _send_group(self, pool: ConnectionPool, jobs: list[Job]) -> list[tuple[Job, Result]]:
        """Send ``jobs`` through one provider over up to ``max_connections`` connections."""
        pending = deque(jobs)
        results: list[tuple[Job, Result]] = []
        name = pool.name

        async def connection_loop() -> None:
            while pending and name not in self.run.down:
                job = pending.popleft()
                try:
                    data = self.build(job, pool.provider)
                    assert job.rendered is not None and job.recipient is not None
                    sender = sender_address(
                        job.rendered.from_address or pool.provider.from_address or ""
                    )
                except Exception as exc:
                    # Whatever is wrong with one message fails that message, not the batch.
                    if not isinstance(exc, InvalidMessage):
                        exc = InvalidMessage(
                            f"cannot build the message: {type(exc).__name__}: {exc}"
                        )
                    results.append((job, exc))
                    continue
                try:
                    accepted = await pool.send(
                        sender, job.recipient.address, data, smtputf8=job.recipient.smtputf8
                    )
                except SMTPError as exc:
                    results.append((job, exc))
                    if exc.provider_level and (
                        exc.stage == "connect"
                        or pool.failures_in_a_row >= self.settings.provider_failure_threshold
                    ):
                        self.run.down.setdefault(name, exc)
                else:
                    results.append((job, accepted))

        workers = min(pool.provider.max_connections, len(jobs))
        await asyncio.gather(*(connection_loop() for _ in range(workers)))
        # Jobs this provider never got to (it went down): handed back for failover. They were
        # never sent, so the failure that took the provider down must not pass on its
        # ambiguity (a drop after DATA of another message would mark them possible duplicates).
        if pending:
            untried = not_attempted(self.run.down[name], name)
            results += [(job, untried) for job in pending]
        return results

    async def _note_health(self, pool: ConnectionPool) -> None:
        """Count a provider that went down once per run; close the circuit of one that works."""
        name = pool.name
        down = self.run.down.get(name)
        if down is not None and name not in self.run.recorded_down:
            self.run.recorded_down.add(name)
            row = await record_provider_failure(self.db, name, self.settings, run=self.run.id)
            log.warning(
                "provider %s failed (%s): %s; failing over%s",
                name,
                down.kind,
                down.message,
                f"; suspended until {row['suspended_until']}"
                if row and row["status"] == "suspended"
                else "",
            )
        elif (
            down is None
            and pool.sent
            and (pool.provider.consecutive_failures or pool.provider.status == "suspended")
        ):
            await record_provider_success(self.db, name)
