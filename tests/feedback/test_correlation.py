"""Correlation at send time: the provider's own message id in its 250 reply to DATA is stored on
the confirmation, and feedback quoting only that id (an SES or SendGrid webhook, a Postfix DSN
without the original headers) finds our message."""

from __future__ import annotations

import time

import pytest

from mailpipe.db import Database
from mailpipe.delivery import drain_queue
from mailpipe.feedback.apply import apply_feedback
from mailpipe.feedback.dsn import import_messages
from mailpipe.queue import enqueue
from mailpipe.smtp import provider_message_id
from mailpipe.testing.feedback import SendGridKey, SnsPki, ses_bounce, sns_message
from mailpipe.testing.smtpd import SMTPTestServer
from tests.factories import add_provider, add_template
from tests.feedback.conftest import Receiver
from tests.feedback.support import dumps, inbox

SES_ID = "0100018c7a8c1b2e-5f0e4f5b-1f8d-4b1a-9c1e-7f1e2b3c4d5e-000000"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (f"Ok {SES_ID}", SES_ID),  # Amazon SES
        ("2.0.0 Ok: queued as 4Z3xYk1Rn9z9sKX", "4Z3xYk1Rn9z9sKX"),  # Postfix
        ("Ok: queued as V3Qs4o2fRdqe8b0QUxXZ5A", "V3Qs4o2fRdqe8b0QUxXZ5A"),  # SendGrid
        ("2.0.0 Ok: queued as <6f1c2d0e-8a7b-4c3d>", "6f1c2d0e-8a7b-4c3d"),  # bracketed
        ("OK id=1tJ8xY-0003Ab-2C", "1tJ8xY-0003Ab-2C"),  # Exim
        ("Great success", None),  # Mailgun: no id
        ("2.0.0 OK 1436801113 x3si14160585iod.35 - gsmtp", None),  # a log line, not an id
        ("2.6.0 <a1@shop.example.com> [InternalId=1] Queued mail for delivery", None),  # ours
        ("2.0.0 OK queued", None),
        ("OK", None),
    ],
)
def test_provider_message_id_from_each_providers_250_reply(
    reply: str, expected: str | None
) -> None:
    assert provider_message_id(reply) == expected


async def send_one(db: Database, smtpd: SMTPTestServer, recipient: str) -> dict:
    """Enqueue and deliver one message; returns its confirmation row."""
    await add_provider(db, "primary", smtpd)
    await add_template(db)
    await enqueue(db, recipient, "welcome", {"name": "Someone"})
    assert (await drain_queue(db)).counts["sent"] == 1
    row = await db.fetch_one(
        "SELECT communication_event_id, message_id, provider_message_id, status"
        " FROM smtp_delivery_confirmations"
    )
    assert row is not None
    return row


@pytest.mark.smtpd(data_reply="250 Ok {queue_id}")
async def test_ses_id_from_the_reply_matches_a_webhook_quoting_only_that_id(
    receiver: Receiver, db: Database, smtpd: SMTPTestServer, sns_pki: SnsPki
) -> None:
    sent = await send_one(db, smtpd, "gone@example.com")
    queue_id = smtpd.accepted[0].queue_id
    assert queue_id and sent["provider_message_id"] == queue_id
    # SES's bounce quotes its own id only (no original headers, so no Message-ID of ours).
    body = sns_message(ses_bounce("gone@example.com", ses_id=queue_id), sns_pki.key)
    assert (await receiver.post("/feedback/ses", dumps(body))).status_code == 200
    result = await apply_feedback(db)
    assert (result.applied, result.unmatched, result.suppressions) == (1, 0, 1)
    [event] = await inbox(db)
    assert event["message_id"] is None and event["provider_message_id"] == queue_id
    assert str(event["matched_event_id"]) == str(sent["communication_event_id"])
    status = await db.fetch_value("SELECT status FROM smtp_delivery_confirmations")
    assert status == "bounced"


@pytest.mark.smtpd(data_reply="250 Ok: queued as {queue_id}")
async def test_sendgrid_queued_as_id_matches_its_sg_message_id(
    receiver: Receiver, db: Database, smtpd: SMTPTestServer, sendgrid_key: SendGridKey
) -> None:
    sent = await send_one(db, smtpd, "mo@example.com")
    queue_id = smtpd.accepted[0].queue_id
    assert sent["provider_message_id"] == queue_id
    body = dumps(
        [
            {
                "email": "mo@example.com",
                "timestamp": int(time.time()),
                "event": "delivered",
                "sg_event_id": "sg-delivered-1",
                # SendGrid's event id of the message: the queued-as id, then its filter suffix.
                "sg_message_id": f"{queue_id}.filterdrecv-5bd68d7f5c-2x6q 1 6753F2A1 7 0",
            }
        ]
    )
    response = await receiver.post("/feedback/sendgrid", body, sendgrid_key.headers(body))
    assert response.status_code == 200
    result = await apply_feedback(db)
    assert (result.applied, result.unmatched, result.status_changes) == (1, 0, 1)
    status = await db.fetch_value("SELECT status FROM smtp_delivery_confirmations")
    assert status == "delivered"


def postfix_dsn(queue_id: str, recipient: str) -> bytes:
    """A Postfix bounce without the original headers (``bounce_notice_recipient`` setups,
    ``header_checks`` that strip them): only its queue id names the message."""
    return (
        "From: MAILER-DAEMON@relay.example.com (Mail Delivery System)\n"
        "To: shop@example.com\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        f"Message-ID: <20261205200102.{queue_id}@relay.example.com>\n"
        "Date: Sat, 5 Dec 2026 20:01:02 +0000 (UTC)\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nThe mail system: user unknown.\n\n"
        "--B\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; relay.example.com\n"
        f"X-Postfix-Queue-ID: {queue_id}\n"
        "Arrival-Date: Sat,  5 Dec 2026 20:01:01 +0000 (UTC)\n\n"
        f"Final-Recipient: rfc822; {recipient}\n"
        "Action: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\n\n"
        "--B--\n"
    ).encode()


@pytest.mark.smtpd(data_reply="250 2.0.0 Ok: queued as {queue_id}")
async def test_postfix_dsn_naming_only_its_queue_id_matches(
    db: Database, smtpd: SMTPTestServer
) -> None:
    sent = await send_one(db, smtpd, "nobody@example.net")
    queue_id = smtpd.accepted[0].queue_id
    assert queue_id and sent["provider_message_id"] == queue_id
    await import_messages(db, [postfix_dsn(queue_id, "nobody@example.net")])
    result = await apply_feedback(db)
    assert (result.applied, result.unmatched, result.attempts) == (1, 0, 1)
    [event] = await inbox(db)
    assert str(event["matched_event_id"]) == str(sent["communication_event_id"])


async def test_a_dsn_quoting_our_message_id_does_not_use_the_queue_id() -> None:
    """Short Postfix queue ids are reused: with our Message-ID quoted, that is the key."""
    from mailpipe.feedback.dsn import parse_report

    raw = postfix_dsn("3F1B2C0E1A", "x@example.net").replace(
        b"--B--\n",
        b"--B\nContent-Type: text/rfc822-headers\n\nMessage-ID: <ours@shop.example.com>\n\n--B--\n",
    )
    [event] = parse_report(raw)
    assert event.message_id == "<ours@shop.example.com>"
    assert event.provider_message_id is None
    [alone] = parse_report(postfix_dsn("3F1B2C0E1A", "x@example.net"))
    assert alone.provider_message_id == "3F1B2C0E1A"


@pytest.mark.smtpd(data_reply="250 Great success")
async def test_a_reply_without_an_id_stores_none(db: Database, smtpd: SMTPTestServer) -> None:
    sent = await send_one(db, smtpd, "mo@example.com")
    assert sent["provider_message_id"] is None and sent["status"] == "accepted"
