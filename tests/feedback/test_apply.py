"""Applying the inbox: matched by provider id, Message-ID or VERP token; confirmation status
forward only; suppressions the next delivery obeys; soft bounces counted in a window;
unmatched events kept; a failing event kept with its error and retried."""

from __future__ import annotations

import time
from pathlib import Path

from mailpipe.db import Database
from mailpipe.delivery import drain_queue
from mailpipe.feedback.apply import apply_feedback
from mailpipe.feedback.dsn import import_files, import_messages, verp_return_path
from mailpipe.feedback.settings import FeedbackSettings
from mailpipe.queue import enqueue
from mailpipe.testing.feedback import SendGridKey, SnsPki, ses_complaint, ses_delivery, sns_message
from mailpipe.testing.smtpd import SMTPTestServer
from tests.factories import add_provider, add_template
from tests.feedback.conftest import Receiver
from tests.feedback.support import add_sent_message, dumps, inbox

FIXTURES = Path(__file__).parent / "fixtures"


def settings(**kw: object) -> FeedbackSettings:
    return FeedbackSettings(**kw)


async def generic_events(db: Database, *events: dict) -> None:
    """Store events as the generic route does (already authenticated)."""
    from mailpipe.feedback.inbox import store_events
    from mailpipe.feedback.providers.generic import parse_event
    from mailpipe.feedback.vocabulary import Verification

    await store_events(db, [parse_event(e, Verification.SHARED_SECRET) for e in events])


async def confirmation(db: Database, confirmation_id: int) -> dict:
    row = await db.fetch_one(
        "SELECT status FROM smtp_delivery_confirmations WHERE id = %s", (confirmation_id,)
    )
    assert row is not None
    return row


async def suppressions(db: Database) -> dict[str, dict]:
    rows = await db.fetch_all(
        "SELECT address, reason, source, expires_at FROM email_suppressions ORDER BY address"
    )
    return {r["address"]: r for r in rows}


async def test_hard_bounce_by_webhook_bounces_suppresses_and_the_next_send_is_suppressed(
    receiver: Receiver, db: Database, smtpd: SMTPTestServer, sendgrid_key: SendGridKey
) -> None:
    await add_provider(db, "primary", smtpd)
    await add_template(db)
    sent = await enqueue(db, "Gone@Example.com", "welcome", {"name": "Gone"})
    await enqueue(db, "stays@example.com", "welcome", {"name": "Stays"})
    assert (await drain_queue(db)).counts["sent"] == 2
    message_id = await db.fetch_value(
        "SELECT message_id FROM communication_events WHERE id = %s", (sent.id,)
    )
    body = dumps(
        [
            {
                "email": "gone@example.com",
                "timestamp": int(time.time()),
                "smtp-id": message_id,
                "event": "bounce",
                "type": "bounce",
                "status": "5.1.1",
                "reason": "550 5.1.1 The email account that you tried to reach does not exist",
                "sg_event_id": "sg-bounce-1",
                "sg_message_id": "unknown-to-us.filter0001",
            }
        ]
    )
    for _ in range(2):  # SendGrid retries: the second request changes nothing
        response = await receiver.post("/feedback/sendgrid", body, sendgrid_key.headers(body))
        assert response.status_code == 200

    result = await apply_feedback(db)
    assert (result.applied, result.unmatched, result.errors) == (1, 0, 0)
    assert (result.status_changes, result.suppressions, result.attempts) == (1, 1, 1)
    [row] = await inbox(db)
    assert row["state"] == "applied" and row["matched_event_id"] == sent.id
    assert row["effect"] == ["status:bounced", "suppressed:hard_bounce", "attempt:bounced"]
    status = await db.fetch_value(
        "SELECT status FROM smtp_delivery_confirmations WHERE message_id = %s", (message_id,)
    )
    assert status == "bounced"
    assert (await suppressions(db))["gone@example.com"]["reason"] == "hard_bounce"
    attempt = await db.fetch_one(
        "SELECT communication_event_id, provider_name, outcome, smtp_code, error"
        " FROM delivery_attempts WHERE outcome = 'bounced'"
    )
    assert attempt is not None
    assert (attempt["communication_event_id"], attempt["provider_name"], attempt["smtp_code"]) == (
        sent.id,
        "primary",
        550,
    )
    assert attempt["error"].startswith("feedback sendgrid: 550 5.1.1")

    again = await apply_feedback(db)
    assert again.processed == 0  # nothing due: one effect per event

    # The next message to that address is suppressed at delivery; others still go out.
    await enqueue(db, "gone@example.com", "welcome", {"name": "Gone"})
    await enqueue(db, "stays@example.com", "welcome", {"name": "Stays"})
    counts = (await drain_queue(db)).counts
    assert counts["suppressed"] == 1 and counts["sent"] == 1
    assert len(smtpd.accepted) == 3


async def test_complaint_from_an_arf_report_suppresses(db: Database) -> None:
    sent = await add_sent_message(db, "user@example.com")
    await db.execute(
        "UPDATE smtp_delivery_confirmations SET message_id = %s WHERE id = %s",
        ("<8787KJKJ3K4J3K4J3K4J3.mail@example.net>", sent["confirmation_id"]),
    )
    await import_files(db, [FIXTURES / "rfc5965-abuse.eml"])
    result = await apply_feedback(db)
    assert (result.applied, result.suppressions) == (1, 1)
    assert (await confirmation(db, sent["confirmation_id"]))["status"] == "complained"
    entry = (await suppressions(db))["user@example.com"]
    assert (entry["reason"], entry["source"], entry["expires_at"]) == (
        "complaint",
        "feedback arf",
        None,
    )


async def test_postfix_bounce_matched_by_verp_token_alone(db: Database) -> None:
    # The fixture's return path has no domain part: the database's Message-ID domain is used.
    token = "7d8f2c1e-0b9a-4f5e-9c3d-2a1b0c9d8e7f"
    sent = await add_sent_message(db, "nosuchuser@example.net")
    await db.execute(
        "UPDATE smtp_delivery_confirmations SET message_id = %s WHERE id = %s",
        (f"<{token}@mailpipe.local>", sent["confirmation_id"]),
    )
    raw = (FIXTURES / "postfix-bounce.eml").read_bytes()
    raw = raw.replace(f"Message-ID: <{token}@mail.example.com>\n".encode(), b"")
    await import_messages(db, [raw])
    [stored] = await inbox(db)
    assert stored["message_id"] is None and stored["verp_token"] == token
    result = await apply_feedback(db)
    assert result.applied == 1
    assert (await confirmation(db, sent["confirmation_id"]))["status"] == "bounced"


async def test_verp_token_with_the_message_id_domain(db: Database) -> None:
    sent = await add_sent_message(db, "nosuchuser@example.net")
    path = verp_return_path(sent["message_id"], "bounce.example.com")
    raw = (FIXTURES / "postfix-bounce.eml").read_bytes()
    raw = raw.replace(b"Message-ID: <7d8f2c1e-0b9a-4f5e-9c3d-2a1b0c9d8e7f@mail.example.com>\n", b"")
    raw = raw.replace(
        b"bounces+7d8f2c1e-0b9a-4f5e-9c3d-2a1b0c9d8e7f@bounce.example.com", path.encode()
    )
    await import_messages(db, [raw])
    assert (await apply_feedback(db)).applied == 1
    assert (await confirmation(db, sent["confirmation_id"]))["status"] == "bounced"


async def test_matched_by_provider_message_id_and_status_never_goes_backwards(
    db: Database,
) -> None:
    sent = await add_sent_message(db, "fay@example.com", provider_message_id="ses-123")
    base = {"recipient": "fay@example.com", "provider_message_id": "ses-123"}
    # One batch: delivered and complaint for the same message: the complaint wins.
    await generic_events(
        db, {"id": "1", "kind": "delivered", **base}, {"id": "2", "kind": "complaint", **base}
    )
    result = await apply_feedback(db)
    assert (result.applied, result.status_changes) == (2, 1)
    assert (await confirmation(db, sent["confirmation_id"]))["status"] == "complained"
    # A late "delivered" or hard bounce never undoes it.
    await generic_events(
        db, {"id": "3", "kind": "delivered", **base}, {"id": "4", "kind": "hard_bounce", **base}
    )
    result = await apply_feedback(db)
    assert (result.applied, result.status_changes, result.attempts) == (2, 0, 0)
    assert (await confirmation(db, sent["confirmation_id"]))["status"] == "complained"
    effects = {r["provider_event_id"]: r["effect"] for r in await inbox(db)}
    assert effects["1"] == [] and effects["2"] == ["status:complained", "suppressed:complaint"]
    assert effects["3"] == [] and effects["4"] == []  # already suppressed for a complaint


async def test_soft_bounces_suppress_after_the_threshold_within_the_window(db: Database) -> None:
    config = settings(soft_bounce_threshold=3, soft_bounce_window_days=7)
    sent = [await add_sent_message(db, "gil@example.com") for _ in range(3)]
    other = await add_sent_message(db, "hal@example.com")

    async def soft(event_id: str, message: dict) -> None:
        await generic_events(
            db,
            {
                "id": event_id,
                "kind": "soft_bounce",
                "recipient": "gil@example.com",
                "message_id": message["message_id"],
            },
        )

    await soft("s1", sent[0])
    await soft("s2", sent[1])
    await generic_events(
        db,
        {
            "id": "h1",
            "kind": "soft_bounce",
            "recipient": "hal@example.com",
            "message_id": other["message_id"],
        },
    )
    result = await apply_feedback(db, settings=config)
    assert (result.applied, result.suppressions) == (3, 0)
    assert await suppressions(db) == {}
    await soft("s3", sent[2])
    result = await apply_feedback(db, settings=config)
    assert result.suppressions == 1
    entry = (await suppressions(db))["gil@example.com"]
    assert entry["reason"] == "soft_bounce"
    assert entry["source"] == "feedback: 3 soft bounces in 7 days"
    remaining = await db.fetch_value(
        "SELECT expires_at - now() FROM email_suppressions WHERE address = 'gil@example.com'"
    )
    assert 29.9 < remaining.total_seconds() / 86400 <= 30
    # Confirmations stay accepted: a soft bounce is not a final status.
    assert {(await confirmation(db, s["confirmation_id"]))["status"] for s in sent} == {"accepted"}
    # A later hard bounce makes the temporary suppression permanent.
    await generic_events(
        db,
        {
            "id": "x",
            "kind": "hard_bounce",
            "recipient": "gil@example.com",
            "message_id": sent[0]["message_id"],
        },
    )
    await apply_feedback(db, settings=config)
    entry = (await suppressions(db))["gil@example.com"]
    assert (entry["reason"], entry["expires_at"]) == ("hard_bounce", None)


async def test_unmatched_events_are_retried_then_kept_and_counted(db: Database) -> None:
    await generic_events(
        db,
        {
            "id": "u1",
            "kind": "hard_bounce",
            "recipient": "ivy@example.com",
            "message_id": "<not-yet@mailpipe.local>",
        },
    )
    result = await apply_feedback(db)
    assert (result.applied, result.unmatched) == (0, 1)
    [row] = await inbox(db)
    assert (row["state"], row["attempts"]) == ("unmatched", 1)
    retry_in = await db.fetch_value(
        "SELECT next_attempt_at - now() FROM email_feedback_events WHERE id = %s", (row["id"],)
    )
    assert 0 < retry_in.total_seconds() <= 60
    assert (await apply_feedback(db)).processed == 0  # not due yet

    # The confirmation is recorded after the webhook arrived; the retry matches it.
    sent = await add_sent_message(db, "ivy@example.com")
    await db.execute(
        "UPDATE smtp_delivery_confirmations SET message_id = '<not-yet@mailpipe.local>'"
        " WHERE id = %s",
        (sent["confirmation_id"],),
    )
    await db.execute("UPDATE email_feedback_events SET next_attempt_at = now()")
    result = await apply_feedback(db)
    assert result.applied == 1
    assert (await confirmation(db, sent["confirmation_id"]))["status"] == "bounced"

    # Past the retry window an unmatched event is kept for good (no effect).
    await generic_events(
        db,
        {
            "id": "u2",
            "kind": "complaint",
            "recipient": "joe@example.com",
            "message_id": "<never@mailpipe.local>",
        },
    )
    result = await apply_feedback(db, settings=settings(unmatched_retry_minutes=0))
    assert result.unmatched == 1
    kept = await db.fetch_one(
        "SELECT state, next_attempt_at, processed_at FROM email_feedback_events"
        " WHERE provider_event_id = 'u2'"
    )
    assert kept is not None and kept["state"] == "unmatched"
    assert kept["next_attempt_at"] is None and kept["processed_at"] is not None
    assert "joe@example.com" not in await suppressions(db)


async def test_a_failing_event_keeps_its_error_and_is_retried(db: Database) -> None:
    good = await add_sent_message(db, "kim@example.com")
    bad = await add_sent_message(db, "lee@example.com")
    # A broken database object (say, an application trigger) fails this one confirmation.
    await db.execute(
        "CREATE FUNCTION refuse_lee() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.recipient_email = 'lee@example.com' THEN"
        " RAISE EXCEPTION 'lee''s confirmation is locked by the app'; END IF;"
        " RETURN NEW; END $$;"
        " CREATE TRIGGER refuse_lee BEFORE UPDATE ON smtp_delivery_confirmations"
        " FOR EACH ROW EXECUTE FUNCTION refuse_lee()"
    )
    await generic_events(
        db,
        {
            "id": "k",
            "kind": "delivered",
            "recipient": "kim@example.com",
            "message_id": good["message_id"],
        },
        {
            "id": "l",
            "kind": "delivered",
            "recipient": "lee@example.com",
            "message_id": bad["message_id"],
        },
    )
    result = await apply_feedback(db)
    assert (result.applied, result.errors) == (1, 1)
    rows = {r["provider_event_id"]: r for r in await inbox(db)}
    assert rows["k"]["state"] == "applied"
    assert rows["l"]["state"] == "error" and rows["l"]["attempts"] == 1
    assert "locked by the app" in rows["l"]["error"]
    assert (await confirmation(db, good["confirmation_id"]))["status"] == "delivered"

    await db.execute("DROP TRIGGER refuse_lee ON smtp_delivery_confirmations")
    await db.execute(
        "UPDATE email_feedback_events SET next_attempt_at = now() WHERE state = 'error'"
    )
    result = await apply_feedback(db)
    assert (result.applied, result.errors) == (1, 0)
    row = (await inbox(db))[1]
    assert (row["state"], row["attempts"], row["error"]) == ("applied", 2, None)
    assert (await confirmation(db, bad["confirmation_id"]))["status"] == "delivered"


async def test_given_up_after_max_attempts(db: Database) -> None:
    sent = await add_sent_message(db, "max@example.com")
    await db.execute(
        "CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'refused'; END $$;"
        " CREATE TRIGGER refuse_all BEFORE UPDATE ON smtp_delivery_confirmations"
        " FOR EACH ROW EXECUTE FUNCTION refuse_all()"
    )
    await generic_events(db, {"id": "m", "kind": "delivered", "message_id": sent["message_id"]})
    config = settings(max_attempts=2)
    for _ in range(2):
        await db.execute(
            "UPDATE email_feedback_events SET next_attempt_at = now()"
            " WHERE next_attempt_at IS NOT NULL"
        )
        assert (await apply_feedback(db, settings=config)).errors == 1
    row = await db.fetch_one("SELECT state, attempts, next_attempt_at FROM email_feedback_events")
    assert row == {"state": "error", "attempts": 2, "next_attempt_at": None}


async def test_batches_are_bounded(db: Database) -> None:
    sent = [await add_sent_message(db, f"n{i}@example.com") for i in range(7)]
    await generic_events(
        db,
        *(
            {"id": str(i), "kind": "delivered", "message_id": s["message_id"]}
            for i, s in enumerate(sent)
        ),
    )
    result = await apply_feedback(db, batch_size=3)
    assert (result.applied, result.batches) == (7, 3)
    assert (
        await db.fetch_value(
            "SELECT count(*) FROM smtp_delivery_confirmations WHERE status = 'delivered'"
        )
        == 7
    )


async def test_ses_delivery_then_complaint_matched_by_ses_message_id(
    receiver: Receiver, db: Database, sns_pki: SnsPki
) -> None:
    ses_id = "010f0191e2b1c3d4-5e6f7a8b-aaaa-bbbb-cccc-123456789abc-000000"
    sent = await add_sent_message(db, "mo@example.com", provider_message_id=ses_id)
    for payload in (
        ses_delivery("mo@example.com", ses_id),
        ses_complaint("mo@example.com", ses_id),
    ):
        body = sns_message(payload, sns_pki.key, version="2")
        assert (await receiver.post("/feedback/ses", dumps(body))).status_code == 200
    result = await apply_feedback(db)
    assert (result.applied, result.status_changes, result.suppressions) == (2, 1, 1)
    assert (await confirmation(db, sent["confirmation_id"]))["status"] == "complained"
    assert [r["kind"] for r in await inbox(db)] == ["delivered", "complaint"]
    assert (await suppressions(db))["mo@example.com"]["source"] == "feedback ses"


async def test_a_large_batch_is_stored_whole_and_once(db: Database) -> None:
    events = [
        {"id": f"big-{i}", "kind": "delivered", "message_id": f"<big-{i}@x>"} for i in range(5000)
    ]
    await generic_events(db, *events)
    await generic_events(
        db, *events[-20:], {"id": "new", "kind": "delivered", "message_id": "<n@x>"}
    )
    assert await db.fetch_value("SELECT count(*) FROM email_feedback_events") == 5001


async def test_a_dsn_quoting_the_real_sent_message_bounces_and_suppresses(
    db: Database, smtpd: SMTPTestServer
) -> None:
    """Our own message, sent over SMTP, comes back as a Postfix DSN quoting its headers."""
    await add_provider(db, "primary", smtpd)
    await add_template(db)
    await enqueue(db, "nobody@example.net", "welcome", {"name": "Nobody"})
    assert (await drain_queue(db)).counts["sent"] == 1
    headers = smtpd.accepted[0].content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")
    template = (FIXTURES / "postfix-bounce.eml").read_bytes()
    quoted_at = template.index(b"Content-Type: text/rfc822-headers")
    start = template.index(b"\n\n", quoted_at) + 2
    end = template.index(b"\n--3F1B2C0E1A", start)
    dsn = (template[:start] + headers + b"\n" + template[end:]).replace(
        b"nosuchuser@example.net", b"nobody@example.net"
    )
    await import_messages(db, [dsn])
    result = await apply_feedback(db)
    assert (result.applied, result.suppressions, result.attempts) == (1, 1, 1)
    assert (await suppressions(db))["nobody@example.net"]["source"] == "feedback dsn"
    await enqueue(db, "nobody@example.net", "welcome", {"name": "Nobody"})
    assert (await drain_queue(db)).counts["suppressed"] == 1
