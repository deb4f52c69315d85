"""The email_feedback_events suite: a healthy inbox passes; each broken invariant is found with
the rows that break it (planted under dropped constraints, as rows from a bad release)."""

from __future__ import annotations

from typing import Any

from mailpipe import quality
from mailpipe.db import Database
from mailpipe.feedback.apply import apply_feedback
from mailpipe.feedback.inbox import store_events
from mailpipe.feedback.providers.generic import parse_event
from mailpipe.feedback.vocabulary import Verification
from tests.feedback.support import add_sent_message
from tests.test_quality import broken


async def plant(db: Database, name: str, **columns: Any) -> int:
    """One inbox row, defaults of a received, verified delivery; returns its id."""
    values = {
        "provider": "generic",
        "provider_event_id": name,
        "verification": "shared_secret",
        "state": "received",
        "kind": "delivered",
        "payload": "{}",
        "next_attempt_at": "now",
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    return await db.fetch_value(
        f"INSERT INTO email_feedback_events ({names}) VALUES ({marks}) RETURNING id",
        tuple(values.values()),
    )


async def test_a_healthy_inbox_passes_and_each_broken_invariant_is_found(
    db: Database, database_url: str
) -> None:
    sent = await add_sent_message(db, "gone@example.com")
    events = [
        {"id": "ok-1", "kind": "hard_bounce", "message_id": sent["message_id"]},
        {"id": "ok-2", "kind": "delivered", "message_id": "<nobody@elsewhere.example>"},
        {"id": "ok-3", "kind": "opened", "message_id": sent["message_id"]},  # ignored
    ]
    await store_events(db, [parse_event(e, Verification.SHARED_SECRET) for e in events])
    await apply_feedback(db)
    healthy = quality.run_checks(["email_feedback_events"], None, database_url)
    assert broken(healthy) == {} and healthy.success

    await db.execute(
        "ALTER TABLE email_feedback_events"
        " DROP CONSTRAINT email_feedback_events_state_check,"
        " DROP CONSTRAINT email_feedback_events_kind_check,"
        " DROP CONSTRAINT email_feedback_events_unverified_not_applied_check"
    )
    weird_state = await plant(db, "weird-state", state="teleported")
    weird_kind = await plant(db, "weird-kind", kind="exploded")
    unverified = await plant(
        db,
        "unverified",
        verification="unverifiable",
        state="applied",
        next_attempt_at=None,
        processed_at="now",
        confirmation_id=sent["confirmation_id"],
        matched_event_id=sent["event_id"],
    )
    unmatched_applied = await plant(
        db, "unmatched-applied", state="applied", next_attempt_at=None, processed_at="now"
    )
    still_queued = await plant(db, "still-queued", state="ignored", kind=None)
    forgotten = await plant(db, "forgotten", state="unmatched", next_attempt_at=None)
    no_reason = await plant(db, "no-reason", state="error")
    future = await plant(db, "future", received_at="2999-01-01T00:00:00Z")

    report = quality.run_checks(["email_feedback_events"], None, database_url)
    assert broken(report) == {
        "email_feedback_events.state_in_set": {weird_state},
        "email_feedback_events.kind_in_set": {weird_kind},
        "email_feedback_events.unverifiable_never_applied": {unverified},
        "email_feedback_events.applied_is_matched": {unmatched_applied},
        "email_feedback_events.done_leaves_the_queue": {still_queued},
        "email_feedback_events.nothing_forgotten": {forgotten},
        "email_feedback_events.error_has_reason": {no_reason},
        "email_feedback_events.received_not_in_future": {future},
    }
    assert not report.success
