"""docs/adopting.md end to end on Debian's Postgres with real pg_cron running the seed's four
jobs: preflight, adopt, provider adopt, cutover, mailpipe delivers what the app enqueues,
finalize, and the database ends with no password and preflight GO."""

from __future__ import annotations

import pytest

from mailpipe.adoption.adopt import adopt
from mailpipe.adoption.cutover import cutover, finalize
from mailpipe.adoption.preflight import DatabaseShape, preflight
from mailpipe.adoption.secrets import adopt_provider_secrets, finalize_provider_secrets
from mailpipe.db import Database
from mailpipe.delivery import drain_queue
from mailpipe.providers import add_provider
from mailpipe.templates import save_template
from mailpipe.testing.smtpd import SMTPTestServer
from tests.adoption.test_secrets import ENV, plaintext_anywhere


@pytest.mark.usefixtures("pg_net_worker")
async def test_the_runbook_from_pg_cron_to_mailpipe(
    cron_app_url: str, smtpd: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV["primary-smtp"], "fixture-plaintext-1")
    monkeypatch.setenv(ENV["backup-smtp"], "fixture-plaintext-2")
    async with Database(cron_app_url, min_size=1, max_size=4) as db:
        before = await preflight(db)  # 1
        assert before.shape == DatabaseShape.APP_BEFORE_HARDENING and not before.go

        adopted = await adopt(db)  # 3
        assert adopted.adoption_applied and adopted.migrations_applied
        await adopt_provider_secrets(db, password_env=ENV)  # 4
        await save_template(
            db,
            "order_confirmation",
            subject="Order {{ orderNumber }}",
            text_body="Thanks {{ customerName }}.\n",
        )
        await add_provider(
            db,
            "relay",
            host="127.0.0.1",
            port=smtpd.port,
            tls_mode="none",
            from_address="shop@example.com",
            priority=1,
        )
        await db.execute(
            "UPDATE smtp_provider_configs SET status = 'disabled' WHERE provider_name <> 'relay'"
        )

        handed = await cutover(db, poll_interval=0.02)  # 6
        assert handed.handed_over
        jobs = await db.fetch_all("SELECT jobname, active FROM cron.job")
        assert jobs and not any(j["active"] for j in jobs)

        # 7: the app keeps writing through its own path (the service role, via its trigger).
        async with db.transaction() as tx:
            await tx.execute("SET LOCAL ROLE service_role")
            await tx.execute(
                "SELECT set_config('request.jwt.claims', %s, true)", ('{"role": "service_role"}',)
            )
            await tx.execute(
                "INSERT INTO orders (order_number, customer_name, customer_email)"
                " VALUES ('ORD-7777', 'Radia', 'radia@example.com')"
            )
        await drain_queue(db, batch_size=50)
        assert [m.rcpt_tos for m in smtpd.accepted if m.rcpt_tos == ["radia@example.com"]]

        mid = await preflight(db)  # 8
        assert mid.shape == DatabaseShape.ADOPTED
        assert mid.blocker_codes() == ["plaintext_credentials"]  # password_encrypted, until 9

        await finalize(db, poll_interval=0.02)  # 9
        await finalize_provider_secrets(db)
        assert await db.fetch_value("SELECT count(*) FROM cron.job") == 0
        after = await preflight(db)
    assert after.go, after.blockers
    assert plaintext_anywhere(cron_app_url) == []
