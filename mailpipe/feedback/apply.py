"""Apply stored feedback in batches: confirmation status, suppressions, attempt history.

The flow ``process_email_feedback`` calls :func:`apply_feedback`. Each batch is claimed with
``FOR UPDATE SKIP LOCKED`` (two workers never take the same event), matched to our messages by
the provider's message id, our Message-ID or the VERP token, then applied by one set-based
statement (``sql/queries/feedback.sql``) that locks what it changes in one fixed order (the
confirmations by id, then the suppressions by address), so concurrent workers applying
feedback about the same messages queue behind each other and never deadlock:

- ``smtp_delivery_confirmations.status`` moves forward only: accepted < delivered < bounced <
  complained (a late "delivered" never hides a bounce);
- hard bounces, complaints and unsubscribes suppress the address at once; soft bounces suppress
  it for a while after ``soft_bounce_threshold`` of them within the window (Keila-style);
- a hard bounce that bounced a confirmation adds a ``bounced`` row to ``delivery_attempts``;
- an event matching no message stays ``unmatched``, retried with backoff for
  ``unmatched_retry_minutes`` (its confirmation may not be recorded yet), then kept and counted.

A batch whose statement fails is re-applied one event at a time, so a single bad event is
marked ``error`` (with the error and its attempts, retried later) without holding up the rest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from mailpipe.db import Database
from mailpipe.errors import DatabaseConflict, DatabaseError, DatabaseUnavailable
from mailpipe.feedback.settings import FeedbackSettings, get_feedback_settings
from mailpipe.queries import query

log = logging.getLogger(__name__)
CONFLICT_RETRIES = 5  # batches rolled back by a concurrent transaction, tried again


@dataclass
class FeedbackResult:
    """What one :func:`apply_feedback` call did."""

    applied: int = 0
    unmatched: int = 0
    errors: int = 0
    status_changes: int = 0
    suppressions: int = 0
    attempts: int = 0
    batches: int = 0
    elapsed_seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        """Events looked at: applied, unmatched or failed."""
        return self.applied + self.unmatched + self.errors

    def add(self, row: dict[str, int]) -> None:
        """Add the counts one applied batch returned."""
        self.applied += row["applied"]
        self.unmatched += row["unmatched"]
        self.status_changes += row["status_changes"]
        self.suppressions += row["suppressions"]
        self.attempts += row["attempts"]

    def as_dict(self) -> dict[str, object]:
        """Plain figures (artifacts, ``--json``)."""
        return {
            "applied": self.applied,
            "unmatched": self.unmatched,
            "errors": self.errors,
            "status_changes": self.status_changes,
            "suppressions": self.suppressions,
            "attempts": self.attempts,
            "batches": self.batches,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


def _window_label(days: float) -> str:
    return f"{days:g} days" if days != 1 else "1 day"


def _params(settings: FeedbackSettings) -> dict[str, object]:
    suppression_days = settings.soft_bounce_suppression_days
    return {
        "soft_window_seconds": settings.soft_bounce_window_days * 86400,
        "soft_window_label": _window_label(settings.soft_bounce_window_days),
        "soft_threshold": settings.soft_bounce_threshold,
        # NULL interval (forever) is expressed as a NULL expiry: see the query.
        "soft_suppression_seconds": suppression_days * 86400 if suppression_days else None,
        "unmatched_seconds": settings.unmatched_retry_minutes * 60,
    }


async def _apply_batch(
    db: Database, batch_size: int, only_id: int | None, params: dict[str, object]
) -> dict[str, int]:
    async with db.transaction() as tx:
        row = await tx.fetch_one(
            query("apply_feedback_batch"),
            {"batch_size": batch_size, "only_id": only_id, **params},
        )
    assert row is not None  # an aggregate always returns its row
    return row


async def apply_feedback(
    db: Database,
    *,
    batch_size: int = 1000,
    max_batches: int | None = None,
    settings: FeedbackSettings | None = None,
) -> FeedbackResult:
    """Apply every due inbox event (received, unmatched still in its retry window, error
    within its attempts), ``batch_size`` at a time; returns the counts."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    settings = settings or get_feedback_settings()
    params = _params(settings)
    result = FeedbackResult()
    started = time.perf_counter()
    conflicts = 0
    while max_batches is None or result.batches < max_batches:
        try:
            row = await _apply_batch(db, batch_size, None, params)
        except DatabaseConflict as exc:
            # Rolled back whole by a concurrent transaction: nothing of it was applied, and
            # the same batch again normally goes through. Not the events' fault.
            conflicts += 1
            if conflicts > CONFLICT_RETRIES:
                raise
            log.warning("a feedback batch was rolled back (%s); applying it again", exc)
            continue
        except DatabaseUnavailable:
            raise
        except DatabaseError as exc:
            log.warning("a feedback batch failed (%s); applying its events one by one", exc)
            result.batches += 1
            if not await _one_by_one(db, batch_size, params, settings, result):
                break
            continue
        if not row["claimed"]:
            break
        result.add(row)
        result.batches += 1
        if row["claimed"] < batch_size:
            break
    result.elapsed_seconds = time.perf_counter() - started
    return result


async def _one_by_one(
    db: Database,
    batch_size: int,
    params: dict[str, object],
    settings: FeedbackSettings,
    result: FeedbackResult,
) -> int:
    """Re-apply a failed batch event by event; each failure is kept on its event. Returns
    how many events were looked at."""
    ids = [
        r["id"]
        for r in await db.fetch_all(
            "SELECT id FROM email_feedback_events WHERE next_attempt_at <= now()"
            " ORDER BY next_attempt_at, id LIMIT %s",
            (batch_size,),
        )
    ]
    for event_id in ids:
        try:
            result.add(await _apply_batch(db, 1, event_id, params))
        except (DatabaseUnavailable, DatabaseConflict):
            raise  # not this event's fault: the run (or its retry) applies it later
        except DatabaseError as exc:
            message = str(exc)[:1000]
            await db.execute(
                query("mark_feedback_error"),
                {"id": event_id, "error": message, "max_attempts": settings.max_attempts},
            )
            result.errors += 1
            result.error_messages.append(f"event {event_id}: {message}")
            log.warning("feedback event %s failed: %s", event_id, message)
    return len(ids)
