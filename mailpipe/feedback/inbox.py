"""The feedback inbox: every provider event stored verbatim before anything is applied."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailpipe.db import Database, Row
from mailpipe.errors import IntegrityViolation
from mailpipe.feedback.vocabulary import FeedbackEvent, FeedbackState, Forbidden, RawJson
from mailpipe.queries import query
from mailpipe.serialization import dumps

#: The unique index that refuses a Mailgun token used for a second event.
REPLAY_INDEX = "idx_email_feedback_events_replay_token"


@dataclass(frozen=True)
class Stored:
    """What one store call did: rows added, and repeats of events already stored."""

    added: int
    duplicates: int


def _payload_text(payload: Any) -> str | None:
    # JSON text either way (Postgres casts it to jsonb): a whole body goes as it came.
    if payload is None or isinstance(payload, RawJson):
        return payload
    return dumps(payload)


def _no_nul(value: Any) -> Any:
    # Postgres text holds no NUL character (a bounce or a malformed body may): an escape.
    return value.replace("\x00", "\\x00") if isinstance(value, str) else value


def _values(event: FeedbackEvent) -> list[Any]:
    """The event's columns in store_feedback_event(s) order, then whether it is due."""
    return [_no_nul(v) for v in _columns(event)]


def _columns(event: FeedbackEvent) -> list[Any]:
    return [
        event.provider,
        event.provider_event_id,
        event.occurred_at,
        _payload_text(event.payload),
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
        event.state is FeedbackState.RECEIVED,
    ]


async def store_events(db: Database, events: Sequence[FeedbackEvent]) -> Stored:
    """Store a request's events in one INSERT; an event already stored (same provider and
    event id) is a no-op. A replayed one-time token with a new event raises
    :class:`Forbidden`."""
    if not events:
        return Stored(0, 0)
    # One event id twice in one request (a provider's own repeat) counts once.
    unique = list({(e.provider, e.provider_event_id): e for e in events}.values())
    try:
        if len(unique) == 1:
            values = _values(unique[0])
            rows = await db.fetch_all(query("store_feedback_event"), [*values, values[-1]])
        else:
            # One array per column: the statement stays the same whatever the batch size
            # (a VALUES list would be a new statement, parsed anew, for every size).
            columns = [list(c) for c in zip(*(_values(e) for e in unique), strict=True)]
            rows = await db.fetch_all(query("store_feedback_events"), columns)
    except IntegrityViolation as exc:
        if exc.constraint_name == REPLAY_INDEX:
            raise Forbidden("this signed token was already used for another event") from None
        raise
    return Stored(len(rows), len(events) - len(rows))


async def list_events(
    db: Database, *, states: Sequence[FeedbackState | str] | None = None, limit: int = 100
) -> list[Row]:
    """Inbox rows, newest first (all states unless ``states`` is given)."""
    wanted = [FeedbackState(s).value for s in states] if states else None
    return await db.fetch_all(query("list_feedback_events"), {"states": wanted, "limit": limit})


async def state_counts(db: Database) -> dict[str, int]:
    """How many inbox rows are in each state."""
    return {r["state"]: r["n"] for r in await db.fetch_all(query("feedback_state_counts"))}
