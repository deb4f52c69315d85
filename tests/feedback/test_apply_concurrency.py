"""Two appliers at once over feedback about the same messages: no deadlock, and every event
applied exactly once (each batch claims its inbox rows with SKIP LOCKED, then locks the
confirmations in id order before the suppressions in address order)."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from mailpipe.db import Database
from mailpipe.feedback.apply import FeedbackResult, apply_feedback
from mailpipe.feedback.inbox import store_events
from mailpipe.feedback.providers.generic import parse_event
from mailpipe.feedback.vocabulary import Verification

MESSAGES = 200
ADDRESSES = 50  # several messages per address: suppressions collide as well as confirmations
KINDS = ("delivered", "hard_bounce", "complaint", "unsubscribe")
ROUNDS = 8  # the unordered apply deadlocked in one run of two (8 rounds)


async def feedback_about_the_same_messages(db: Database, round_: int) -> int:
    """MESSAGES sent messages and four reports about each, stored in shuffled order so every
    batch touches confirmations and addresses in no particular order; returns the events."""
    rows = await db.fetch_all(
        "WITH e AS (INSERT INTO communication_events (event_type, recipient_email, template_key,"
        " status, sent_at, provider_name)"
        " SELECT 'welcome', 'r' || %s || '-' || (n %% %s) || '@example.com', 'welcome', 'sent',"
        " now(), 'primary' FROM generate_series(1, %s) AS n"
        " RETURNING id, message_id, recipient_email)"
        " INSERT INTO smtp_delivery_confirmations (communication_event_id, recipient_email,"
        " smtp_response, provider_name, message_id, status, smtp_code)"
        " SELECT id, recipient_email, '250 ok', 'primary', message_id, 'accepted', 250 FROM e"
        " RETURNING id, message_id",
        (round_, ADDRESSES, MESSAGES),
    )
    events = [
        {"id": f"{kind}-{r['id']}", "kind": kind, "message_id": r["message_id"]}
        for r in rows
        for kind in KINDS
    ]
    random.Random(round_).shuffle(events)
    await store_events(db, [parse_event(e, Verification.SHARED_SECRET) for e in events])
    return len(events)


async def test_two_appliers_over_the_same_messages_never_deadlock(
    db: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def applier() -> FeedbackResult:
        async with Database(database_url, min_size=1, max_size=1) as own:
            return await apply_feedback(own, batch_size=20)

    total = 0
    for round_ in range(ROUNDS):
        events = await feedback_about_the_same_messages(db, round_)
        total += events
        with caplog.at_level(logging.WARNING, logger="mailpipe.feedback.apply"):
            # A deadlock (DatabaseConflict) is retried with a warning: it fails here.
            first, second = await asyncio.gather(applier(), applier())
        assert [r.getMessage() for r in caplog.records] == []
        assert first.errors == second.errors == 0
        assert first.applied + second.applied == events
        assert first.applied and second.applied  # both took part

    states = await db.fetch_all(
        "SELECT state, attempts, count(*) AS n FROM email_feedback_events GROUP BY 1, 2"
    )
    assert [(r["state"], r["attempts"], r["n"]) for r in states] == [("applied", 1, total)]
    # The strongest status won everywhere; one bounced attempt at most per message (only if
    # its bounce was applied before its complaint), one suppression per address.
    statuses = await db.fetch_all(
        "SELECT status, count(*) AS n FROM smtp_delivery_confirmations GROUP BY 1"
    )
    assert [(r["status"], r["n"]) for r in statuses] == [("complained", ROUNDS * MESSAGES)]
    assert (
        await db.fetch_value(
            "SELECT count(*) FROM (SELECT communication_event_id FROM delivery_attempts"
            " WHERE outcome = 'bounced' GROUP BY 1 HAVING count(*) > 1) AS twice"
        )
        == 0
    )
    assert await db.fetch_value("SELECT count(*) FROM email_suppressions") == ROUNDS * ADDRESSES
