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


#: Rows per INSERT statement (Postgres takes at most 65,535 parameters in one statement).
CHUNK = 2000


def _values(event: FeedbackEvent) -> list[Any]:
    due = event.state is FeedbackState.RECEIVED
    return [
        event.provider,
        event.provider_event_id,
        event.occurred_at,
        None if event.payload is None else Jsonb(to_jsonable(event.payload)),
        event.raw,
        event.content_type,
        event.verification.value,
        event.replay_token,
        event.state.value,
        event.kind.value if event.kind else None,
        event.provider_kind,
        event.recipient,
        event.message_id,
        event.provider_message_id,
        event.verp_token,
        event.reason,
        event.smtp_code,
        event.enhanced_status,
        event.error,
        due,
        due,
    ]


def _insert(count: int) -> str:
    return query("store_feedback_events").replace(
        "{rows}", ",\n".join([query("feedback_event_row")] * count)
    )


async def store_events(db: Database, events: Sequence[FeedbackEvent]) -> Stored:
    """Store events in one INSERT (one per 2,000 events, in one transaction); an event already
    stored (same provider and event id) is a no-op. A replayed one-time token with a new event
    raises :class:`Forbidden`."""
    if not events:
        return Stored(0, 0)
    # One event id twice in one request (a provider's own repeat) counts once.
    unique = list({(e.provider, e.provider_event_id): e for e in events}.values())
    chunks = [unique[i : i + CHUNK] for i in range(0, len(unique), CHUNK)]
    added = 0
    try:
        if len(chunks) == 1:
            params = [v for e in unique for v in _values(e)]
            added = len(await db.fetch_all(_insert(len(unique)), params))
        else:
            async with db.transaction() as tx:
                for chunk in chunks:
                    params = [v for e in chunk for v in _values(e)]
                    added += len(await tx.fetch_all(_insert(len(chunk)), params))
    except IntegrityViolation as exc:
        if exc.constraint_name == REPLAY_INDEX:
            raise Forbidden("this signed token was already used for another event") from None
        raise
    return Stored(added, len(events) - added)


async def list_events(
    db: Database, *, states: Sequence[FeedbackState | str] | None = None, limit: int = 100
) -> list[Row]:
    """Inbox rows, newest first (all states unless ``states`` is given)."""
    wanted = [FeedbackState(s).value for s in states] if states else None
    return await db.fetch_all(query("list_feedback_events"), {"states": wanted, "limit": limit})


async def state_counts(db: Database) -> dict[str, int]:
    """How many inbox rows are in each state."""
    return {r["state"]: r["n"] for r in await db.fetch_all(query("feedback_state_counts"))}
