"""process_email_queue's engine against a real Postgres and real in-process SMTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy

import pytest

from mailpipe.config import Settings
from mailpipe.db import Database
from mailpipe.delivery import Drainer, drain_queue
from mailpipe.providers import Provider
from mailpipe.queue import enqueue
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer, free_port
from tests.factories import add_provider, add_template, insert_events, statuses
from tests.reliability.support import DeadlineExceeded, wait_for


@pytest.fixture
async def ready(db: Database, smtpd: SMTPTestServer) -> Database:
    """One healthy provider (the test's smtpd) and a welcome template."""
    await add_provider(db, "primary", smtpd)
    await add_template(db)
    return db


def provider_for(host: str, port: int) -> Provider:
    """A provider as loaded from the table, without a row (for SMTP-level tests)."""
    return Provider(
        id=0,
        name="p",
        host=host,
        port=port,
        tls_mode="none",
        username=None,
        credentials=None,
        from_address=None,
        priority=1,
        timeout_seconds=5,
        max_connections=1,
        per_minute_limit=None,
        per_hour_limit=None,
        per_day_limit=None,
        status="active",
        suspended_until=None,
        health_score=100,
        consecutive_failures=0,
        last_checked=None,
    )


async def events(db: Database) -> list[dict]:
    return await db.fetch_all(
        "SELECT id, status, retry_count, last_error, error_class, provider_name, sent_at,"
        " scheduled_at, may_be_duplicate, message_id, lease_expires_at, locked_by"
        " FROM communication_events ORDER BY id"
    )


async def make_due(db: Database) -> None:
    """Time passes: every queued event becomes due (instead of waiting for the backoff)."""
    await db.execute(
        "UPDATE communication_events SET scheduled_at = now() - interval '1 second'"
        " WHERE status = 'queued'"
    )


async def test_sends_and_confirms(ready: Database, smtpd: SMTPTestServer) -> None:
    await insert_events(ready, 25)
    result = await drain_queue(ready, batch_size=10)
    assert result.counts["sent"] == 25 and result.batches == 3
    rows = await events(ready)
    assert {r["status"] for r in rows} == {"sent"}
    assert all(r["provider_name"] == "primary" and r["sent_at"] for r in rows)
    assert all(r["lease_expires_at"] is None and r["locked_by"] is None for r in rows)
    confirmations = await ready.fetch_all(
        "SELECT communication_event_id, message_id, provider_name, status, smtp_code"
        " FROM smtp_delivery_confirmations ORDER BY communication_event_id"
    )
    assert [(c["communication_event_id"], c["message_id"]) for c in confirmations] == [
        (r["id"], r["message_id"]) for r in rows
    ]
    assert {(c["provider_name"], c["status"], c["smtp_code"]) for c in confirmations} == {
        ("primary", "accepted", 250)
    }
    assert sorted(smtpd.accepted_message_ids()) == sorted(r["message_id"] for r in rows)


async def test_message_is_rendered_standard_mime(ready: Database, smtpd: SMTPTestServer) -> None:
    await add_template(
        ready,
        "order",
        subject="Grüße {{ name }}",
        text_body="Total: {{ total }} €",
        html_body="<p>{{ name }}</p>",
        from_address="Büro <office@example.com>",
    )
    await enqueue(ready, "joerg@bücher.de", "order", {"name": "<Jörg & Co>", "total": 12})
    await drain_queue(ready)
    received = smtpd.accepted[0]
    assert received.mail_from == "office@example.com"
    assert received.rcpt_tos == ["joerg@xn--bcher-kva.de"]  # IDN domain as punycode
    assert received.content.isascii()  # RFC 2047 headers, quoted-printable bodies
    msg = email.message_from_bytes(received.content, policy=email.policy.default)
    assert msg["Subject"] == "Grüße <Jörg & Co>"
    assert msg["From"].addresses[0].display_name == "Büro"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().strip() == "Total: 12 €"
    # HTML is autoescaped, the text part is not.
    assert msg.get_body(("html",)).get_content().strip() == "<p>&lt;Jörg &amp; Co&gt;</p>"


async def test_utf8_mailbox_uses_smtputf8(ready: Database, smtpd: SMTPTestServer) -> None:
    await enqueue(ready, "jörg@example.com", "welcome", {"name": "Jörg"})
    assert (await drain_queue(ready)).counts["sent"] == 1
    received = smtpd.accepted[0]
    assert received.rcpt_tos == ["jörg@example.com"]
    assert "To: jörg@example.com".encode() in received.content


async def test_priority_order_then_schedule(ready: Database, smtpd: SMTPTestServer) -> None:
    now = dt.datetime.now(dt.UTC)
    low = await insert_events(ready, 3, priority=9, prefix="low")
    high = await insert_events(
        ready, 3, priority=1, prefix="high", scheduled_at=now - dt.timedelta(minutes=1)
    )
    older_high = await insert_events(
        ready, 2, priority=1, prefix="older", scheduled_at=now - dt.timedelta(hours=1)
    )
    drainer = Drainer(ready)
    await drainer.drain(batch_size=1)  # one at a time: the order of claims is the send order
    sent_ids = [
        m.content.split(b"X-Mailpipe-Event: ")[1].split(b"\r\n")[0].decode() for m in smtpd.accepted
    ]
    # Within a priority and due time, claims go by id (ids may be bigint or uuid: their order).
    assert sent_ids == [str(i) for i in sorted(older_high) + sorted(high) + sorted(low)]


async def test_future_events_wait(ready: Database, smtpd: SMTPTestServer) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    await insert_events(ready, 4, scheduled_at=later, prefix="later")
    await insert_events(ready, 2)
    result = await drain_queue(ready)
    assert result.counts["sent"] == 2 and len(smtpd.accepted) == 2
    assert await statuses(ready) == {"sent": 2, "queued": 4}


@pytest.mark.smtpd(data_reply="451 4.3.0 mailbox busy, try later")
async def test_4xx_is_retried_with_backoff(ready: Database) -> None:
    await insert_events(ready, 3)
    before = dt.datetime.now(dt.UTC)
    result = await drain_queue(ready)
    assert result.counts["retry"] == 3
    for row in await events(ready):
        assert row["status"] == "queued" and row["retry_count"] == 1
        assert row["error_class"] == "transient"
        assert row["last_error"] == "451 4.3.0 mailbox busy, try later"
        # base 30 s with jitter in [0.5, 1.0]
        delay = (row["scheduled_at"] - before).total_seconds()
        assert 14 <= delay <= 31
    attempts = await ready.fetch_all("SELECT outcome, smtp_code FROM delivery_attempts")
    assert attempts == [{"outcome": "retry", "smtp_code": 451}] * 3


async def test_backoff_grows_and_is_capped(db: Database, smtpd_factory) -> None:
    server = smtpd_factory(Behaviour(data_reply="451 later"))
    await add_provider(db, "p", server)
    await add_template(db)
    await insert_events(db, 1)
    settings = Settings(retry_base_seconds=10, retry_max_seconds=50, max_retries=10)
    delays = []
    for _ in range(5):
        before = dt.datetime.now(dt.UTC)
        await Drainer(db, settings).drain()
        row = (await events(db))[0]
        delays.append((row["scheduled_at"] - before).total_seconds())
        await make_due(db)
    bounds = [10, 20, 40, 50, 50]
    for delay, bound in zip(delays, bounds, strict=True):
        assert bound * 0.5 - 1 <= delay <= bound + 1


async def test_retries_exhausted_fails(db: Database, smtpd_factory) -> None:
    server = smtpd_factory(Behaviour(data_reply="452 4.2.2 over quota"))
    await add_provider(db, "p", server)
    await add_template(db)
    await insert_events(db, 1)
    settings = Settings(max_retries=2)
    for _ in range(3):
        await Drainer(db, settings).drain()
        await make_due(db)
    row = (await events(db))[0]
    assert row["status"] == "failed" and row["retry_count"] == 3
    assert row["error_class"] == "retries_exhausted"
    assert row["last_error"] == "gave up after 3 attempts: 452 4.2.2 over quota"


@pytest.mark.smtpd(data_reply="554 5.7.1 message rejected as spam")
async def test_554_on_data_fails_permanently(ready: Database) -> None:
    await insert_events(ready, 2)
    result = await drain_queue(ready)
    assert result.counts["failed"] == 2
    rows = await events(ready)
    assert {(r["status"], r["error_class"], r["last_error"], r["retry_count"]) for r in rows} == {
        ("failed", "rejected", "554 5.7.1 message rejected as spam", 0)
    }
    assert await ready.fetch_value("SELECT count(*) FROM email_suppressions") == 0


@pytest.mark.smtpd(rcpt_reply="550 5.1.1 no such user")
async def test_550_on_rcpt_is_a_hard_bounce_and_suppresses(ready: Database) -> None:
    await insert_events(ready, 1, prefix="gone")
    await drain_queue(ready)
    row = (await events(ready))[0]
    assert (row["status"], row["error_class"]) == ("failed", "bounced")
    assert await ready.fetch_all("SELECT address, kind, reason FROM email_suppressions") == [
        {"address": "gone1@example.com", "kind": "address", "reason": "hard_bounce"}
    ]
    assert await ready.fetch_value("SELECT outcome FROM delivery_attempts") == "bounced"


async def test_421_fails_over_to_the_next_provider(db: Database, smtpd_factory) -> None:
    closing = smtpd_factory(Behaviour(data_reply="421 4.3.2 service shutting down"))
    backup = smtpd_factory()
    await add_provider(db, "closing", closing, priority=1)
    await add_provider(db, "backup", backup, priority=2)
    await add_template(db)
    await insert_events(db, 6)
    result = await drain_queue(db)
    assert result.counts["sent"] == 6 and len(backup.accepted) == 6
    assert {r["provider_name"] for r in await events(db)} == {"backup"}
    assert (
        await db.fetch_value("SELECT count(*) FROM delivery_attempts WHERE outcome = 'failover'")
        >= 1
    )


async def test_refused_connection_fails_over_and_counts(db: Database, smtpd_factory) -> None:
    backup = smtpd_factory()
    await add_provider(db, "dead", None, port=free_port(), priority=1)
    await add_provider(db, "backup", backup, priority=2)
    await add_template(db)
    await insert_events(db, 5)
    result = await drain_queue(db)
    assert result.counts["sent"] == 5 and len(backup.accepted) == 5
    dead = await db.fetch_one(
        "SELECT consecutive_failures, status FROM smtp_provider_configs"
        " WHERE provider_name = 'dead'"
    )
    assert dead == {"consecutive_failures": 1, "status": "active"}


async def test_repeated_failures_suspend_and_suspended_is_skipped(
    db: Database, smtpd_factory
) -> None:
    backup = smtpd_factory()
    await add_provider(db, "dead", None, port=free_port(), priority=1)
    await add_provider(db, "backup", backup, priority=2)
    await add_template(db)
    settings = Settings(provider_failure_threshold=2, suspension_base_seconds=60)
    for _ in range(2):
        await insert_events(db, 1)
        await Drainer(db, settings).drain()
    dead = await db.fetch_one(
        "SELECT status, suspended_until > now() + interval '50 seconds' AS later"
        " FROM smtp_provider_configs WHERE provider_name = 'dead'"
    )
    assert dead == {"status": "suspended", "later": True}
    # While suspended it is not even tried: no new failure, no failover attempt rows.
    failovers = await db.fetch_value(
        "SELECT count(*) FROM delivery_attempts WHERE outcome = 'failover'"
    )
    await insert_events(db, 3, prefix="more")
    await Drainer(db, settings).drain()
    assert (
        await db.fetch_value("SELECT count(*) FROM delivery_attempts WHERE outcome = 'failover'")
        == failovers
    )
    assert len(backup.accepted) == 5


async def test_suspension_expiry_is_half_open(db: Database, smtpd_factory) -> None:
    recovered = smtpd_factory()
    await add_provider(
        db,
        "recovered",
        recovered,
        priority=1,
        status="suspended",
        suspended_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
        consecutive_failures=3,
    )
    await add_template(db)
    await insert_events(db, 2)
    await drain_queue(db)
    assert len(recovered.accepted) == 2
    assert await db.fetch_one(
        "SELECT status, consecutive_failures, suspended_until FROM smtp_provider_configs"
    ) == {"status": "active", "consecutive_failures": 0, "suspended_until": None}


async def test_no_usable_provider_defers_without_failing(ready: Database) -> None:
    await ready.execute("UPDATE smtp_provider_configs SET status = 'disabled'")
    await insert_events(ready, 2)
    result = await drain_queue(ready)
    assert result.counts["deferred"] == 2
    rows = await events(ready)
    assert {(r["status"], r["retry_count"], r["error_class"]) for r in rows} == {
        ("queued", 0, "no_provider")
    }


async def test_auth_failure_fails_over(db: Database, smtpd_factory, monkeypatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "wrong-password")
    locked = smtpd_factory(Behaviour(auth=("mailer", "right-password")))
    backup = smtpd_factory()
    await add_provider(
        db,
        "locked",
        locked,
        priority=1,
        username="mailer",
        credentials={"password_env": "TEST_SMTP_PASSWORD"},
    )
    await add_provider(db, "backup", backup, priority=2)
    await add_template(db)
    await insert_events(db, 2)
    await drain_queue(db)
    assert len(backup.accepted) == 2 and locked.accepted == []
    error = await db.fetch_value("SELECT error FROM delivery_attempts WHERE outcome='failover'")
    assert "authentication failed: 535" in error and "wrong-password" not in error


async def test_auth_success_with_env_reference(db: Database, smtpd_factory, monkeypatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "right-password")
    server = smtpd_factory(Behaviour(auth=("mailer", "right-password")))
    await add_provider(
        db, "p", server, username="mailer", credentials={"password_env": "TEST_SMTP_PASSWORD"}
    )
    await add_template(db)
    await insert_events(db, 1)
    assert (await drain_queue(db)).counts["sent"] == 1


async def test_missing_credentials_env_is_a_clear_error(db: Database, smtpd_factory) -> None:
    server = smtpd_factory()
    await add_provider(
        db,
        "p",
        server,
        username="mailer",
        credentials={"password_env": "MAILPIPE_TEST_UNSET_VARIABLE"},
    )
    await add_template(db)
    await insert_events(db, 1)
    await drain_queue(db)
    row = (await events(db))[0]
    assert row["status"] == "queued" and row["retry_count"] == 1
    assert "environment variable MAILPIPE_TEST_UNSET_VARIABLE is not set" in row["last_error"]


async def test_starttls_provider(db: Database, smtpd_factory, tls_certificate) -> None:
    server = smtpd_factory(tls="starttls")
    await add_provider(db, "tls", server, tls_mode="starttls")
    await add_template(db)
    await insert_events(db, 2)
    settings = Settings(smtp_ca_file=tls_certificate.cert_file)
    assert (await Drainer(db, settings).drain()).counts["sent"] == 2


async def test_untrusted_certificate_is_a_tls_failure(db: Database, smtpd_factory) -> None:
    server = smtpd_factory(tls="implicit")
    await add_provider(db, "tls", server, tls_mode="implicit")
    await add_template(db)
    await insert_events(db, 1)
    await Drainer(db, Settings()).drain()
    error = await db.fetch_value("SELECT error FROM delivery_attempts")
    assert error.startswith("TLS failed") or "CERTIFICATE_VERIFY_FAILED" in error


async def test_slow_server_times_out_and_retries(db: Database, smtpd_factory) -> None:
    slow = smtpd_factory(Behaviour(data_delay=3))
    await add_provider(db, "slow", slow, timeout_seconds=0.5)
    await add_template(db)
    await insert_events(db, 1)
    await drain_queue(db)
    row = (await events(db))[0]
    # The timeout hit after the message was sent: it may have been accepted.
    assert (row["status"], row["retry_count"], row["may_be_duplicate"]) == ("queued", 1, True)
    assert "possible duplicate" in row["last_error"]


async def test_drop_after_data_retries_with_the_same_message_id(
    db: Database, smtpd_factory
) -> None:
    flaky = smtpd_factory(Behaviour(drop_after_data=True))
    await add_provider(db, "flaky", flaky)
    await add_template(db)
    await insert_events(db, 1)
    await drain_queue(db)
    first = (await events(db))[0]
    assert first["status"] == "queued" and first["may_be_duplicate"]
    flaky.behaviour.drop_after_data = False
    await make_due(db)
    await drain_queue(db)
    row = (await events(db))[0]
    assert row["status"] == "sent" and row["message_id"] == first["message_id"]
    ids = [m.message_id for m in flaky.messages]
    assert ids == [first["message_id"], first["message_id"]]
    assert await db.fetch_value("SELECT may_be_duplicate FROM smtp_delivery_confirmations") is True


async def test_template_problems_fail_the_event_not_the_batch(
    ready: Database, smtpd: SMTPTestServer
) -> None:
    await add_template(
        ready, "strict", subject="Hi {{ missing_var }}", text_body="x", html_body=None
    )
    await add_template(
        ready,
        "escape",
        subject="{{ ''.__class__.__mro__[1].__subclasses__() }}",
        text_body="x",
        html_body=None,
    )
    good = await insert_events(ready, 2)
    bad = await insert_events(ready, 1, template="strict", prefix="strict")
    unknown = await insert_events(ready, 1, template="nope", prefix="nope")
    escape = await insert_events(ready, 1, template="escape", prefix="escape")
    wrong_type = await insert_events(ready, 1, payload=["not", "an", "object"], prefix="list")
    result = await drain_queue(ready)
    assert result.counts["sent"] == 2 and result.counts["failed"] == 4
    rows = {r["id"]: r for r in await events(ready)}
    assert all(rows[i]["status"] == "sent" for i in good)
    assert rows[bad[0]]["last_error"] == "template 'strict': 'missing_var' is undefined"
    assert rows[unknown[0]]["last_error"].startswith("unknown template 'nope'")
    assert "unsafe operation refused" in rows[escape[0]]["last_error"]
    assert "payload must be a JSON object" in rows[wrong_type[0]]["last_error"]
    assert {rows[i]["error_class"] for i in bad + unknown + escape + wrong_type} == {"template"}
    assert len(smtpd.accepted) == 2


async def test_header_injection_through_variables_is_refused(
    ready: Database, smtpd: SMTPTestServer
) -> None:
    await add_template(ready, "inject", subject="Order {{ ref }}", text_body="x", html_body=None)
    ids = await insert_events(
        ready, 1, template="inject", payload={"ref": "42\r\nBcc: victim@example.org"}
    )
    await insert_events(ready, 1, template="inject", payload={"ref": "43"}, prefix="ok")
    await drain_queue(ready)
    row = next(r for r in await events(ready) if r["id"] == ids[0])
    assert row["status"] == "failed"
    assert row["last_error"] == (
        "header injection refused: Subject contains a line break or control character"
    )
    assert len(smtpd.accepted) == 1
    assert b"victim" not in smtpd.accepted[0].content


async def test_invalid_recipient_claimed_is_failed_by_the_engine(ready: Database) -> None:
    # The trigger catches what its regex knows; email-validator catches the rest.
    await ready.execute(
        "INSERT INTO communication_events (event_type, recipient_email, template_key, payload)"
        " VALUES ('welcome', 'user@example.invalid-tld-', 'welcome', '{\"name\": \"x\"}')"
    )
    await drain_queue(ready)
    row = (await events(ready))[0]
    assert row["status"] == "failed" and row["error_class"] == "invalid"
    assert row["last_error"].startswith("Invalid recipient_email")


async def test_suppressed_recipients_are_not_sent(ready: Database, smtpd: SMTPTestServer) -> None:
    await ready.execute(
        "INSERT INTO email_suppressions (address, kind, reason) VALUES"
        " ('user1@example.com', 'address', 'complaint'), ('blocked.example', 'domain', 'manual'),"
        " ('user2@example.com', 'address', 'unsubscribe')"
    )
    await ready.execute(
        "UPDATE email_suppressions SET expires_at = now() - interval '1 day'"
        " WHERE address = 'user2@example.com'"
    )
    await insert_events(ready, 3)
    await insert_events(ready, 1, domain="blocked.example", prefix="x")
    result = await drain_queue(ready)
    assert result.counts["suppressed"] == 2 and result.counts["sent"] == 2
    rows = await ready.fetch_all(
        "SELECT recipient_email, status, last_error FROM communication_events"
        " WHERE status = 'suppressed' ORDER BY recipient_email"
    )
    assert rows == [
        {
            "recipient_email": "user1@example.com",
            "status": "suppressed",
            "last_error": "recipient suppressed: complaint (address)",
        },
        {
            "recipient_email": "x1@blocked.example",
            "status": "suppressed",
            "last_error": "recipient suppressed: manual (domain blocked.example)",
        },
    ]
    assert sorted(r for m in smtpd.accepted for r in m.rcpt_tos) == [
        "user2@example.com",
        "user3@example.com",
    ]


async def test_provider_rate_limit_defers_the_excess(db: Database, smtpd_factory) -> None:
    server = smtpd_factory()
    await add_provider(db, "limited", server, per_minute_limit=4, per_day_limit=100)
    await add_template(db)
    await insert_events(db, 10)
    result = await drain_queue(db)
    assert result.counts["sent"] == 4 and result.counts["deferred"] == 6
    assert len(server.accepted) == 4
    deferred = await db.fetch_all(
        "SELECT status, retry_count, error_class, scheduled_at > now() AS later"
        " FROM communication_events WHERE status <> 'sent'"
    )
    assert (
        deferred == [{"status": "queued", "retry_count": 0, "error_class": None, "later": True}] * 6
    )
    counters = await db.fetch_all(
        "SELECT window_size, count, deferred FROM rate_limit_counters"
        " WHERE scope = 'provider' ORDER BY window_size"
    )
    assert counters == [
        {"window_size": "day", "count": 4, "deferred": 0},
        {"window_size": "minute", "count": 4, "deferred": 6},
    ]


async def test_quota_overflow_goes_to_the_next_provider(db: Database, smtpd_factory) -> None:
    small, big = smtpd_factory(), smtpd_factory()
    await add_provider(db, "small", small, priority=1, per_minute_limit=3)
    await add_provider(db, "big", big, priority=2)
    await add_template(db)
    await insert_events(db, 10)
    result = await drain_queue(db)
    assert result.counts["sent"] == 10
    assert (len(small.accepted), len(big.accepted)) == (3, 7)


async def test_domain_rate_limit(db: Database, smtpd_factory) -> None:
    server = smtpd_factory()
    await add_provider(db, "p", server)
    await add_template(db)
    await insert_events(db, 5, domain="gmail.com", prefix="g")
    await insert_events(db, 3, domain="example.com")
    result = await Drainer(db, Settings(domain_limits={"gmail.com": 2})).drain()
    assert result.counts["sent"] == 5 and result.counts["deferred"] == 3
    assert (
        await db.fetch_value("SELECT deferred FROM rate_limit_counters WHERE scope = 'domain'") == 3
    )


async def test_expired_lease_is_rescued_and_sent(ready: Database, smtpd: SMTPTestServer) -> None:
    await insert_events(ready, 3)
    # A worker claimed the rows and died: its lease is in the past.
    await ready.execute(
        "UPDATE communication_events SET status = 'processing', locked_by = 'dead:1:x',"
        " lease_expires_at = now() - interval '1 second'"
    )
    result = await drain_queue(ready)
    assert result.rescued == 3 and result.counts["sent"] == 3
    rows = await events(ready)
    assert all(r["status"] == "sent" and r["may_be_duplicate"] for r in rows)


async def test_live_lease_is_not_stolen(ready: Database) -> None:
    await insert_events(ready, 2)
    await ready.execute(
        "UPDATE communication_events SET status = 'processing', locked_by = 'alive:1:x',"
        " lease_expires_at = now() + interval '5 minutes'"
    )
    result = await drain_queue(ready)
    assert result.rescued == 0 and result.counts["sent"] == 0
    assert await statuses(ready) == {"processing": 2}


async def test_concurrent_drainers_never_send_twice(
    db: Database, smtpd_factory, database_url: str
) -> None:
    server = smtpd_factory()
    await add_provider(db, "p", server, max_connections=4)
    await add_template(db)
    await insert_events(db, 600)
    # Two independent pools (as two processes would have) and two drainers on each.
    async with Database(database_url, max_size=4) as other:
        results = await asyncio.gather(
            drain_queue(db, batch_size=25, concurrency=2),
            drain_queue(other, batch_size=25, concurrency=2),
        )
    assert sum(r.counts["sent"] for r in results) == 600
    assert all(r.counts["sent"] > 0 for r in results)
    ids = server.accepted_message_ids()
    assert len(ids) == 600 and len(set(ids)) == 600
    assert await statuses(db) == {"sent": 600}
    assert await db.fetch_value("SELECT count(*) FROM smtp_delivery_confirmations") == 600


async def test_time_budget_stops_between_batches(ready: Database) -> None:
    await insert_events(ready, 30)
    result = await Drainer(ready).drain(batch_size=10, time_budget=1e-9)
    assert result.stopped_by == "time_budget" and result.counts["sent"] == 0
    result = await Drainer(ready).drain(batch_size=10, max_events=20)
    assert result.stopped_by == "max_events" and result.counts["sent"] == 20
    assert await statuses(ready) == {"sent": 20, "queued": 10}


async def test_bad_from_address_fails_that_event_only(
    ready: Database, smtpd: SMTPTestServer
) -> None:
    await add_template(ready, "badfrom", from_address="Shop <no-at-sign>")
    bad = await insert_events(ready, 1, template="badfrom", prefix="bad")
    await insert_events(ready, 2)
    result = await drain_queue(ready)
    assert result.counts["sent"] == 2 and result.counts["failed"] == 1
    row = next(r for r in await events(ready) if r["id"] == bad[0])
    assert (row["status"], row["error_class"]) == ("failed", "invalid")
    assert "invalid from address" in row["last_error"]


async def test_max_events_is_shared_by_the_drainers_of_a_run(ready: Database) -> None:
    await insert_events(ready, 30)
    result = await drain_queue(ready, batch_size=4, concurrency=3, max_events=10)
    assert result.counts["sent"] == 10
    assert await statuses(ready) == {"sent": 10, "queued": 20}


# ------------------------------------------------------------------ defects of issue 15


async def test_priority_holds_across_the_drainers_of_a_run(db: Database, smtpd_factory) -> None:
    """While the drainer holding the priority-1 event is slowed down before it reserves its
    sends (its domain's quota row is locked), the other drainer's priority-9 batch must not
    take the last sends of the window. (Before claims and quota reservations were taken in
    claim order across the drainers of a run, it did: 3 of 19 runs deferred the priority-1
    event.)"""
    server = smtpd_factory()
    await add_provider(db, "limited", server, per_minute_limit=3)
    await add_template(db)
    [urgent] = await insert_events(db, 1, priority=1, domain="slow.example", prefix="urgent")
    await insert_events(db, 8, priority=9, prefix="bulk")
    settings = Settings(domain_limits={"slow.example": 100})
    # The quota row is per minute: start well inside one, so the lock below is the one the
    # drainer meets.
    await wait_for(lambda: dt.datetime.now(dt.UTC).second < 40, what="a fresh minute", timeout=25)
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO rate_limit_counters (scope, key, window_size, window_start, count)"
            " VALUES ('domain', 'slow.example', 'minute', date_trunc('minute', now()), 0)"
        )
        run = asyncio.create_task(drain_queue(db, batch_size=3, concurrency=2, settings=settings))
        await wait_for(
            lambda: db.fetch_value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%reserve_send_quota%%'"
            ),
            what="the priority-1 drainer waits for its domain quota",
            timeout=30,
        )
        # The other drainer's chance to take the provider's quota first (it must not).
        with contextlib.suppress(DeadlineExceeded):
            await wait_for(
                lambda: db.fetch_value(
                    "SELECT coalesce(sum(count), 0) >= 3 FROM rate_limit_counters"
                    " WHERE scope = 'provider'"
                ),
                what="the priority-9 batch took the provider's quota",
                timeout=1,
            )
    result = await run
    assert result.counts["sent"] == 3 and result.counts["deferred"] == 6
    row = next(r for r in await events(db) if r["id"] == urgent)
    assert row["status"] == "sent", row


async def test_a_dead_provider_counts_one_failure_per_run(db: Database, smtpd_factory) -> None:
    """Two drainers both meet the dead provider: one run, one failure (threshold 2 keeps it
    active). Before, each drainer counted its own and the run suspended it."""
    backup = smtpd_factory()
    await add_provider(db, "dead", None, port=free_port(), priority=1)
    await add_provider(db, "backup", backup, priority=2)
    await add_template(db)
    await insert_events(db, 8)
    settings = Settings(provider_failure_threshold=2)
    result = await drain_queue(db, batch_size=1, concurrency=2, settings=settings)
    assert result.counts["sent"] == 8
    dead = await db.fetch_one(
        "SELECT consecutive_failures, status FROM smtp_provider_configs"
        " WHERE provider_name = 'dead'"
    )
    assert dead == {"consecutive_failures": 1, "status": "active"}
    # A second run is a second failure: now it is suspended.
    await insert_events(db, 2, prefix="again")
    await drain_queue(db, batch_size=1, concurrency=2, settings=settings)
    assert (
        await db.fetch_value(
            "SELECT status FROM smtp_provider_configs WHERE provider_name = 'dead'"
        )
        == "suspended"
    )


async def test_provider_failures_count_once_per_run_id(db: Database) -> None:
    """The database keeps the count to one per run, also across processes (same run id)."""
    from mailpipe.providers import record_provider_failure

    await add_provider(db, "p", None, port=free_port())
    settings = Settings(provider_failure_threshold=10)
    for run in ("run-a", "run-a", "run-b", None, None):
        await record_provider_failure(db, "p", settings, run=run)
    assert await db.fetch_value("SELECT consecutive_failures FROM smtp_provider_configs") == 4


async def test_failed_on_every_provider_records_the_last_one_tried(
    db: Database, smtpd_factory
) -> None:
    await add_provider(db, "first", None, port=free_port(), priority=1)
    await add_provider(db, "second", None, port=free_port(), priority=2)
    await add_template(db)
    await insert_events(db, 1)
    result = await drain_queue(db)
    assert result.counts["retry"] == 1
    row = (await events(db))[0]
    assert (row["status"], row["error_class"], row["provider_name"]) == (
        "queued",
        "transient",
        "second",
    )
    attempts = await db.fetch_all(
        "SELECT provider_name, outcome FROM delivery_attempts ORDER BY id"
    )
    assert attempts == [
        {"provider_name": "first", "outcome": "failover"},
        {"provider_name": "second", "outcome": "failover"},
        {"provider_name": "second", "outcome": "retry"},
    ]


@pytest.mark.parametrize(("given", "stored"), [(42, 9), (-1, 0), (10, 9)])
async def test_an_out_of_range_priority_is_failed_at_insert(
    ready: Database, smtpd: SMTPTestServer, given: int, stored: int
) -> None:
    """An application's plain INSERT: the trigger fails the row with the reason and stores
    a priority in range, so the table invariant (and the suite's priority_in_range) holds."""
    [event_id] = await insert_events(ready, 1, priority=given)
    row = await ready.fetch_one(
        "SELECT status, priority, error_class, last_error FROM communication_events"
    )
    assert row == {
        "status": "failed",
        "priority": stored,
        "error_class": "invalid",
        "last_error": f"Invalid priority {given}: use 0 (first) to 9 (stored as {stored})",
    }
    assert (await drain_queue(ready)).counts["sent"] == 0 and smtpd.accepted == []
    # A later UPDATE cannot bring an out-of-range priority in either.
    await insert_events(ready, 1, prefix="fine")
    await ready.execute("UPDATE communication_events SET priority = 99 WHERE id <> %s", (event_id,))
    assert (
        await ready.fetch_value(
            "SELECT count(*) FROM communication_events WHERE priority NOT BETWEEN 0 AND 9"
        )
        == 0
    )


async def test_the_retry_condition_reads_real_errors(smtpd_factory) -> None:
    """The flow task's retry condition fires on what a retry can fix, from real failures."""
    from prefect.states import Failed

    from mailpipe.errors import DatabaseUnavailable
    from mailpipe.messages import InvalidMessage
    from mailpipe.retries import retry_on_transient
    from mailpipe.smtp import (
        MessageDeferred,
        MessageRejected,
        ProviderUnavailable,
        RecipientRefused,
        open_connection,
        send_message,
    )

    def retried(exc: BaseException) -> bool:
        return retry_on_transient(None, None, Failed(data=exc))

    lost = None
    try:
        async with Database(f"postgresql://nobody@127.0.0.1:{free_port()}/x", min_size=1):
            pass
    except DatabaseUnavailable as exc:
        lost = exc
    assert lost is not None and retried(lost) and isinstance(lost, ConnectionError)

    with pytest.raises(ProviderUnavailable) as refused:
        await open_connection(provider_for("127.0.0.1", free_port()), None, Settings())
    assert retried(refused.value) and isinstance(refused.value, ConnectionError)
    assert refused.value.kind == "refused" and refused.value.stage == "connect"

    async def failure(behaviour: Behaviour) -> BaseException:
        server = smtpd_factory(behaviour)
        client = await open_connection(provider_for(server.host, server.port), None, Settings())
        try:
            await send_message(client, "a@example.com", "b@example.com", b"Subject: x\r\n\r\nx")
        except Exception as exc:
            return exc
        finally:
            client.close()
        raise AssertionError("the server accepted the message")

    busy = await failure(Behaviour(data_reply="451 4.3.0 try later"))
    assert isinstance(busy, MessageDeferred) and (busy.code, busy.stage) == (451, "data")
    assert retried(busy)
    spam = await failure(Behaviour(data_reply="554 5.7.1 spam"))
    assert isinstance(spam, MessageRejected) and spam.code == 554 and not retried(spam)
    gone = await failure(Behaviour(rcpt_reply="550 5.1.1 no such user"))
    assert isinstance(gone, RecipientRefused) and gone.stage == "rcpt" and not retried(gone)
    assert not retried(InvalidMessage("Invalid recipient_email: empty"))
    assert not retried(ValueError("a bug"))


async def test_the_summary_uses_the_stored_outcome_words(ready: Database) -> None:
    """One set of words from the database to the log line: sent, retry, failed (with the
    error_class), deferred, suppressed."""
    from mailpipe.delivery import OUTCOMES
    from mailpipe.delivery import summary as run_summary

    await insert_events(ready, 2)
    await insert_events(ready, 1, template="nope", prefix="bad")
    summary = (await drain_queue(ready)).summary()
    assert OUTCOMES == ("sent", "retry", "failed", "deferred", "suppressed")
    assert {k: summary[k] for k in OUTCOMES} == {
        "sent": 2,
        "retry": 0,
        "failed": 1,
        "deferred": 0,
        "suppressed": 0,
    }
    assert summary["failed_by_reason"] == {"template": 1}
    assert run_summary.log_line(summary).startswith(
        "sent 2, retry 0, failed 1 (template 1), deferred 0, suppressed 0, rescued 0 in "
    )
    stored = await ready.fetch_all(
        "SELECT DISTINCT status, error_class FROM communication_events ORDER BY status"
    )
    assert stored == [
        {"status": "failed", "error_class": "template"},
        {"status": "sent", "error_class": None},
    ]
