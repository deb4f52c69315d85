"""An outbox event's feedback, for operators: the latest report per message (``mailpipe queue
list``) and an event's whole history after the 250 (``mailpipe queue show``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mailpipe.db import Database, Row
from mailpipe.errors import DatabaseError, DatabaseUnavailable, MailpipeError
from mailpipe.queries import query


class UnknownEvent(MailpipeError):
    """No outbox event has this id (or the text is not an id of this database's type)."""


@dataclass
class EventFeedback:
    """One event, its confirmation (None: never accepted) and its feedback, oldest first."""

    event: Row
    feedback: list[Row] = field(default_factory=list)

    @property
    def latest(self) -> Row | None:
        """The most recent feedback event (any state), or None."""
        return self.feedback[-1] if self.feedback else None


async def latest_feedback(db: Database, message_ids: Iterable[str | None]) -> dict[str, Row]:
    """Message-ID -> its latest applied feedback (``feedback`` kind, ``feedback_at``,
    ``feedback_provider``, ``feedback_events``, ``confirmation_status``); messages without
    feedback are left out."""
    wanted = sorted({m for m in message_ids if m})
    if not wanted:
        return {}
    rows = await db.fetch_all(query("feedback_of_messages"), {"message_ids": wanted})
    return {r["message_id"]: r for r in rows}


async def event_feedback(db: Database, event_id: str | int) -> EventFeedback:
    """The event ``event_id`` (a number or a UUID, as this database's ids are), with every
    feedback event matched to it; :class:`UnknownEvent` when there is none."""
    # The id goes to Postgres as text of unknown type: compared as bigint or uuid, whichever
    # communication_events.id is.
    text = str(event_id).strip()
    try:
        event = await db.fetch_one(query("feedback_event_detail"), {"id": text})
    except DatabaseUnavailable:
        raise
    except DatabaseError:
        event = None  # not a valid id of this type ("abc" for bigint, "7" for uuid)
    if event is None:
        raise UnknownEvent(
            f"no event {text!r}: give an id from `mailpipe queue list` (a number or a UUID, "
            "as this database's ids are)"
        )
    history = await db.fetch_all(query("feedback_of_event"), {"id": event["id"]})
    return EventFeedback(event, history)
