"""Recording a batch: every outcome, confirmation and attempt row in one transaction."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailpipe.db import Database
from mailpipe.delivery.outcomes import Outcome
from mailpipe.delivery.preparing import Job
from mailpipe.queries import query
from mailpipe.values import EventId

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000
MAX_REPLY_LENGTH = 1000


@dataclass(frozen=True)
class Finished:
    """An event's outcome, as ``finish_events`` writes it."""

    id: EventId
    status: str
    scheduled_at: dt.datetime | None
    retried: int
    last_error: str | None
    error_class: str | None
    provider_name: str | None
    sent_at: dt.datetime | None
    may_be_duplicate: bool


@dataclass(frozen=True)
class Confirmation:
    """An accepted message, as ``insert_confirmations`` writes it."""

    id: EventId
    provider: str
    message_id: str
    recipient: str
    status: str
    code: int
    response: str
    duplicate: bool
    at: dt.datetime
    provider_message_id: str | None = None  # the provider's id from its 250 reply


@dataclass(frozen=True)
class Attempt:
    """An unsuccessful attempt, as ``insert_attempts`` writes it."""

    id: EventId
    provider: str | None
    outcome: str  # retry, failed, bounced, deferred, suppressed, failover
    code: int | None
    error: str
    at: dt.datetime


@dataclass
class BatchRecord:
    """Everything one batch decided, written by :func:`record_batch`."""

    worker: str
    finished: list[Finished] = field(default_factory=list)
    confirmations: list[Confirmation] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    bounces: list[str] = field(default_factory=list)  # addresses to suppress (hard bounces)
    deferrals: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # scope, key, window
    counts: Counter[str] = field(default_factory=Counter)  # outcome word -> events
    by_provider: Counter[str] = field(default_factory=Counter)  # provider -> sent

    def finish(self, job: Job, outcome: Outcome, at: dt.datetime) -> None:
        """Record ``job``'s outcome (and its attempt row, confirmation or bounce)."""
        duplicate = outcome.duplicate
        self.finished.append(
            Finished(
                id=job.id,
                status=outcome.status,
                scheduled_at=outcome.scheduled_at,
                retried=int(outcome.retried),
                last_error=outcome.error[:MAX_ERROR_LENGTH] if outcome.error else None,
                error_class=outcome.error_class,
                provider_name=outcome.provider,
                sent_at=outcome.sent_at,
                may_be_duplicate=duplicate,
            )
        )
        self.counts[outcome.word] += 1
        if outcome.attempt is not None:
            self.attempt(
                job,
                outcome.attempt,
                outcome.provider,
                outcome.code,
                outcome.attempt_error or outcome.error,
                at,
            )
        if outcome.bounce and job.recipient is not None:
            self.bounces.append(job.recipient.address.lower())

    def confirm(
        self,
        job: Job,
        provider: str,
        code: int,
        reply: str,
        at: dt.datetime,
        *,
        provider_message_id: str | None = None,
    ) -> None:
        """Record the provider's acceptance of ``job``'s message (and the provider's own id
        of it, when its reply gave one: feedback webhooks quote that id)."""
        assert job.recipient is not None
        self.confirmations.append(
            Confirmation(
                id=job.id,
                provider=provider,
                message_id=job.row["message_id"],
                recipient=job.recipient.address,
                status="accepted",
                code=code,
                response=reply[:MAX_REPLY_LENGTH],
                duplicate=bool(job.row["may_be_duplicate"]),
                at=at,
                provider_message_id=provider_message_id,
            )
        )
        self.by_provider[provider] += 1

    def attempt(
        self,
        job: Job,
        outcome: str,
        provider: str | None,
        code: int | None,
        error: str | None,
        at: dt.datetime,
    ) -> None:
        """Record an unsuccessful attempt (also ``failover``, which is not an outcome)."""
        self.attempts.append(
            Attempt(job.id, provider, outcome, code, (error or "")[:MAX_ERROR_LENGTH], at)
        )


def _columns(rows: Sequence[Any], names: dict[str, str]) -> dict[str, list[Any]]:
    """Query parameter -> the column of that attribute across ``rows`` (for unnest)."""
    return {param: [getattr(row, attr) for row in rows] for param, attr in names.items()}


async def record_batch(db: Database, record: BatchRecord) -> int:
    """Write every outcome of the batch in one transaction (a handful of statements).

    Returns how many outcomes were not written because another worker re-claimed the event
    after this worker's lease expired.
    """
    if not record.finished:
        return 0
    async with db.transaction() as tx:
        updated = await tx.fetch_all(
            query("finish_events"),
            {
                **_columns(
                    record.finished,
                    {
                        "ids": "id",
                        "statuses": "status",
                        "scheduled_at": "scheduled_at",
                        "retried": "retried",
                        "last_errors": "last_error",
                        "error_classes": "error_class",
                        "providers": "provider_name",
                        "sent_at": "sent_at",
                        "duplicates": "may_be_duplicate",
                    },
                ),
                "worker": record.worker,
            },
        )
        if record.confirmations:
            await tx.execute(
                query("insert_confirmations"),
                _columns(
                    record.confirmations,
                    {
                        "ids": "id",
                        "providers": "provider",
                        "message_ids": "message_id",
                        "recipients": "recipient",
                        "statuses": "status",
                        "codes": "code",
                        "responses": "response",
                        "duplicates": "duplicate",
                        "at": "at",
                        "provider_message_ids": "provider_message_id",
                    },
                ),
            )
        if record.attempts:
            await tx.execute(
                query("insert_attempts"),
                _columns(
                    record.attempts,
                    {
                        "ids": "id",
                        "providers": "provider",
                        "outcomes": "outcome",
                        "codes": "code",
                        "errors": "error",
                        "at": "at",
                    },
                ),
            )
        if record.deferrals:
            await tx.execute_many(
                query("count_deferrals"),
                [
                    {"scope": scope, "key": key, "window": window, "deferred": n}
                    for (scope, key, window), n in sorted(record.deferrals.items())
                ],
            )
        if record.bounces:
            n = len(record.bounces)
            await tx.execute(
                query("add_suppressions"),
                {
                    "addresses": record.bounces,
                    "kinds": ["address"] * n,
                    "reasons": ["hard_bounce"] * n,
                    "sources": ["smtp 5xx on RCPT"] * n,
                    "expires_at": [None] * n,
                },
            )
    lost = len(record.finished) - len(updated)
    if lost:
        log.warning(
            "%d events of the batch were re-claimed by another worker after our "
            "lease expired; their outcome here was not recorded",
            lost,
        )
    return lost
