"""The feedback inbox: every provider event stored verbatim before anything is applied."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailpipe.db import Database, Jsonb, Row
from mailpipe.errors import IntegrityViolation
from mailpipe.feedback.vocabulary import FeedbackEvent, FeedbackState, Forbidden
from mailpipe.queries import query
from mailpipe.serialization import to_jsonable

#: The unique index that refuses a Mailgun token used for a second event.
REPLAY_INDEX = "idx_email_feedback_events_replay_token"


@dataclass(frozen=True)
class Stored:
    """What one store call did: rows added, and repeats of events already stored."""

    added: int
    duplicates: int


def _row(event: FeedbackEvent) -> dict[str, Any]:
    return {
        "provider": event.provider,
        "provider_event_id": event.provider_event_id,
        "occurred_at": event.occurred_at,
        "payload": event.payload,
        "raw": event.raw,
        "content_type": event.content_type,
        "verification": event.verification.value,
        "replay_token": event.replay_token,
        "state": event.state.value,
        "kind": event.kind.value if event.kind else None,
        "provider_kind": event.provider_kind,
        "recipient": event.recipient,
        "message_id": event.message_id,
        "provider_message_id": event.provider_message_id,
        "verp_token": event.verp_token,
        "reason": event.reason,
        "smtp_code": event.smtp_code,
        "enhanced_status": event.enhanced_status,
        "error": event.error,
    }


async def store_events(db: Database, events: Sequence[FeedbackEvent]) -> Stored:
    """Store events in one INSERT; an event already stored (same provider and event id) is
    a no-op. A replayed one-time token with a new event raises :class:`Forbidden`."""
    if not events:
        return Stored(0, 0)
    # One event id twice in one request (a provider's own repeat) counts once.
    unique = list({(e.provider, e.provider_event_id): e for e in events}.values())
    rows = [to_jsonable(_row(e)) for e in unique]
    try:
        inserted = await db.fetch_all(query("store_feedback_events"), {"rows": Jsonb(rows)})
    except IntegrityViolation as exc:
        if exc.constraint_name == REPLAY_INDEX:
            raise Forbidden("this signed token was already used for another event") from None
        raise
    return Stored(len(inserted), len(events) - len(inserted))


async def list_events(
    db: Database, *, states: Sequence[FeedbackState | str] | None = None, limit: int = 100
) -> list[Row]:
    """Inbox rows, newest first (all states unless ``states`` is given)."""
    wanted = [FeedbackState(s).value for s in states] if states else None
    return await db.fetch_all(query("list_feedback_events"), {"states": wanted, "limit": limit})


async def state_counts(db: Database) -> dict[str, int]:
    """How many inbox rows are in each state."""
    return {r["state"]: r["n"] for r in await db.fetch_all(query("feedback_state_counts"))}
