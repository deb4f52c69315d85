"""End to end: mail sent through the fault SMTP server (SES-style 250 replies carrying the
provider's id, refused recipients, a 451), feedback arriving by signed SNS webhooks and by
Postfix DSNs, then the five flows' work: confirmation status, suppression, the next send to a
bounced address suppressed, a bounce_rate alert opened, the snapshot counting it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailpipe.config import get_settings
from mailpipe.db import Database
from mailpipe.feedback.dsn import import_messages
from mailpipe.queue import enqueue
from mailpipe.snapshots import today
from mailpipe.testing.feedback import (
    SnsPki,
    ses_bounce,
    ses_complaint,
    ses_delivery,
    sns_message,
)
from mailpipe.testing.smtpd import SMTPTestServer
from tests.factories import add_provider, add_template
from tests.feedback.conftest import Receiver
from tests.feedback.support import dumps
from tests.feedback.test_correlation import postfix_dsn

FIXTURES = Path(__file__).parent / "fixtures"
REFUSED = ("gone-a@example.net", "gone-b@example.net")  # 550 at RCPT: bounced at send time


def dsn_quoting(sent_content: bytes, recipient: str) -> bytes:
    """A Postfix bounce quoting the headers of the message mailpipe really sent."""
    headers = sent_content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")
    template = (FIXTURES / "postfix-bounce.eml").read_bytes()
    quoted_at = template.index(b"Content-Type: text/rfc822-headers")
    start = template.index(b"\n\n", quoted_at) + 2
    end = template.index(b"\n--3F1B2C0E1A", start)
    return (template[:start] + headers + b"\n" + template[end:]).replace(
        b"nosuchuser@example.net", recipient.encode()
    )


@pytest.fixture
def long_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The deferred message stays deferred for the whole test (the second run leaves it)."""
    monkeypatch.setenv("MAILPIPE_RETRY_BASE_SECONDS", "3600")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


async def counts(db: Database, sql: str) -> dict[str, int]:
    return {r["k"]: r["n"] for r in await db.fetch_all(sql)}


@pytest.mark.smtpd(
    data_reply="250 Ok {queue_id}",  # as SES answers: its message id
    data_script=["451 4.3.0 try again later"],  # the first message is deferred
    rcpt_replies={a: "550 5.1.1 no such user" for a in REFUSED},
)
async def test_send_feedback_by_webhook_and_dsn_then_status_suppression_alert_snapshot(
    prefect_harness,
    receiver: Receiver,
    db: Database,
    env_database: str,
    smtpd: SMTPTestServer,
    sns_pki: SnsPki,
    long_retry_backoff: None,
) -> None:
    from flows.monitor_email_production import monitor_email_production
    from flows.process_email_feedback import process_email_feedback
    from flows.process_email_queue import process_email_queue
    from flows.snapshot_email_health import snapshot_email_health

    figures: dict[str, Any] = {}
    await add_provider(db, "ses", smtpd)
    await add_template(db)
    recipients = [f"r{i:02d}@example.com" for i in range(58)] + list(REFUSED)
    for address in recipients:
        await enqueue(db, address, "welcome", {"name": "R"})

    # 1. Send: 57 accepted with SES ids, 2 refused at RCPT, 1 deferred by a 451.
    sent = await process_email_queue()
    assert (sent["sent"], sent["failed"], sent["retry"]) == (57, 2, 1)
    accepted = sorted(smtpd.accepted, key=lambda m: m.rcpt_tos[0])
    assert len(accepted) == 57 and all(m.queue_id for m in accepted)
    stored = await db.fetch_value(
        "SELECT count(*) FROM smtp_delivery_confirmations WHERE provider_message_id IS NOT NULL"
    )
    assert stored == 57
    figures["send"] = {k: sent[k] for k in ("sent", "failed", "retry")}

    # 2. Feedback by SES (SNS, signed), quoting SES's message id only.
    def ses(payload: dict[str, Any]) -> bytes:
        return dumps(sns_message(payload, sns_pki.key, version="2"))

    def rcpt(m: Any) -> str:
        return m.rcpt_tos[0]

    webhooks = [ses(ses_delivery(rcpt(m), m.queue_id)) for m in accepted[:40]]
    webhooks += [ses(ses_bounce(rcpt(m), ses_id=m.queue_id)) for m in accepted[40:43]]
    webhooks.append(ses(ses_complaint(rcpt(accepted[43]), accepted[43].queue_id)))
    webhooks.append(
        ses(ses_bounce(rcpt(accepted[44]), bounce_type="Transient", ses_id=accepted[44].queue_id))
    )
    webhooks.append(ses(ses_delivery("stranger@example.org", "0100-not-a-message-of-ours")))
    for body in [*webhooks, webhooks[40]]:  # SNS redelivers a bounce: no second effect
        response = await receiver.post("/feedback/ses", body)
        assert response.status_code == 200, response.text
    # 3. Feedback by DSN: a Postfix bounce quoting our headers, one naming its queue id only.
    dsn = await import_messages(
        db,
        [
            dsn_quoting(accepted[45].content, rcpt(accepted[45])),
            postfix_dsn(accepted[46].queue_id or "", rcpt(accepted[46])),
        ],
    )
    assert (dsn.messages, dsn.added) == (2, 2)
    figures["inbox"] = await counts(
        db,
        "SELECT provider || '/' || kind AS k, count(*) AS n FROM email_feedback_events GROUP BY 1",
    )
    assert figures["inbox"] == {
        "ses/delivered": 41,
        "ses/hard_bounce": 3,
        "ses/complaint": 1,
        "ses/soft_bounce": 1,
        "dsn/hard_bounce": 2,
    }

    # 4. The fifth flow applies the inbox.
    applied = await process_email_feedback()
    assert (applied["applied"], applied["unmatched"], applied["errors"]) == (47, 1, 0)
    assert (applied["status_changes"], applied["suppressions"], applied["attempts"]) == (
        46,
        6,
        5,
    )
    figures["apply"] = {
        k: applied[k] for k in ("applied", "unmatched", "status_changes", "suppressions")
    }
    figures["confirmations"] = await counts(
        db, "SELECT status AS k, count(*) AS n FROM smtp_delivery_confirmations GROUP BY 1"
    )
    assert figures["confirmations"] == {
        "delivered": 40,
        "bounced": 5,
        "complained": 1,
        "accepted": 11,
    }
    figures["suppressions"] = await counts(
        db, "SELECT reason AS k, count(*) AS n FROM email_suppressions GROUP BY 1"
    )
    assert figures["suppressions"] == {"hard_bounce": 7, "complaint": 1}  # 2 at RCPT + 5 later

    # 5. The next send to a bounced or complaining address is suppressed at delivery.
    for m in (accepted[40], accepted[45], accepted[46], accepted[43]):
        await enqueue(db, rcpt(m), "welcome", {"name": "Again"})
    await enqueue(db, "fresh@example.com", "welcome", {"name": "New"})
    again = await process_email_queue()
    assert (again["sent"], again["suppressed"]) == (1, 4)
    assert len(smtpd.accepted) == 58

    # 6. A bounce_rate alert opens: (2 at RCPT + 5 reported) / (58 accepted + 2 refused).
    monitored = await monitor_email_production()
    assert {"bounce_rate:all:critical", "complaint_rate:all:critical"} <= set(monitored["firing"])
    alert = await db.fetch_one(
        "SELECT severity, value, threshold, details FROM alerts"
        " WHERE rule = 'bounce_rate' AND scope = 'all' AND resolved_at IS NULL"
    )
    assert alert is not None and alert["severity"] == "critical"
    assert alert["value"] == pytest.approx(7 / 60) and alert["threshold"] == 0.10
    figures["bounce_rate"] = round(alert["value"], 4)

    # 7. Today's snapshot counts what the providers reported.
    day = await today(db, "UTC")
    await snapshot_email_health(start=day, end=day)
    row = await db.fetch_one(
        "SELECT sent, delivered, bounced, complained, hard_bounces, suppressed, hard_bounce_rate"
        " FROM email_health_snapshots WHERE provider_name = '*'"
    )
    assert row is not None
    assert dict(row) == {
        "sent": 58,
        "delivered": 40,
        "bounced": 5,
        "complained": 1,
        "hard_bounces": 7,
        "suppressed": 4,
        # 7 bounces among the 60 messages (58 accepted, 5 of them reported bounced, and 2
        # refused), as bounce_rate counts them: each message once.
        "hard_bounce_rate": 7 / 60,
    }
    figures["snapshot"] = dict(row)
    print(f"end-to-end figures: {figures}")
