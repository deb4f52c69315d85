"""``mailpipe db preflight`` on every shape a target can have: fresh, mailpipe's own, the app's
before and after the seed's hardening, with real pg_cron, and a shape nobody knows."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from click.testing import Result

from mailpipe.adoption.adopt import AdoptionRefused
from mailpipe.adoption.preflight import ConnectionMode, PreflightReport, connection_mode, preflight
from mailpipe.config import get_settings
from mailpipe.db import Database, admin_execute
from mailpipe.errors import DatabaseError
from mailpipe.queries import query
from tests.adoption.conftest import SEED_JOBS
from tests.adoption.test_adopt import _adopt, fingerprint
from tests.cli_support import invoke

# The fixture's secrets: none may ever appear in preflight's output.
PLAINTEXTS = ("fixture-plaintext-1", "fixture-plaintext-2", "fixture-plaintext-3")
BEARER_KEY = "fixture-service-role-key"


def _preflight_cli(url: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        return invoke("db", "preflight", *args)
    finally:
        get_settings.cache_clear()


def _json_report(url: str, monkeypatch: pytest.MonkeyPatch, *, code: int) -> dict[str, Any]:
    result = _preflight_cli(url, monkeypatch, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


async def _report(url: str) -> PreflightReport:
    async with Database(url, min_size=1, max_size=2) as db:
        return await preflight(db)


async def _fingerprint(url: str) -> tuple[Any, ...]:
    async with Database(url, min_size=1, max_size=1) as db:
        schema = await db.fetch_one(query("adoption_schema_fingerprint"))
        rows = await db.fetch_all(
            "SELECT event_id, channel, body, state FROM communication_events ORDER BY event_id"
        )
    assert schema is not None
    return schema["fingerprint"], schema["items"], rows


def test_fresh_database_is_go(empty_database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    report = _json_report(empty_database_url, monkeypatch, code=0)
    assert report["shape"] == "fresh" and report["go"] is True
    assert report["blockers"] == []
    assert [s["action"] for s in report["steps"]] == ["mailpipe db migrate creates every table"]
    assert all(t["shape"] == "absent" for t in report["tables"])


def test_mailpipe_database_is_go_with_nothing_to_do(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _json_report(database_url, monkeypatch, code=0)
    assert report["shape"] == "mailpipe" and report["go"] is True
    assert report["blockers"] == [] and report["findings"] == []
    assert report["pending_migrations"] == [] and report["steps"] == []
    assert {t["name"]: t["shape"] for t in report["tables"]} == {
        "communication_events": "mailpipe",
        "smtp_provider_configs": "mailpipe",
        "smtp_connection_audit": "mailpipe",
        "smtp_delivery_confirmations": "mailpipe",
        "rate_limit_counters": "mailpipe",
    }
    assert report["connection"]["mode"] == "direct"


def test_app_before_hardening_is_no_go_with_exactly_its_blockers(
    app_before_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _preflight_cli(app_before_url, monkeypatch, "--json")
    assert result.exit_code == 1, result.output
    assert not any(secret in result.output for secret in PLAINTEXTS)
    report = json.loads(result.stdout)

    assert report["shape"] == "app_before_hardening" and report["go"] is False
    assert [b["code"] for b in report["blockers"]] == [
        "uuid_ids",
        "enum_status",
        "text_priority",
        "template_columns",
        "plaintext_credentials",
    ]
    blockers = {b["code"]: b for b in report["blockers"]}
    assert "cancelled, suppressed" in blockers["enum_status"]["message"]
    assert report["plaintext_secrets"] == {
        "providers": 2,
        "provider_names": ["backup-smtp", "primary-smtp"],
        "columns": ["password_encrypted"],
    }
    assert blockers["plaintext_credentials"]["fixed_by"] == "mailpipe provider adopt"
    assert blockers["uuid_ids"]["fixed_by"] == "mailpipe db adopt"
    # Three writers; the order trigger names its template in template_id only.
    writers = {w["function"]: w for w in report["event_writers"]}
    assert set(writers) == {
        "recover_failed_registration(text)",
        "trigger_customer_welcome_email()",
        "trigger_order_emails()",
    }
    assert writers["trigger_order_emails()"]["sets_template_id"] is True
    assert writers["trigger_order_emails()"]["sets_template_key"] is False
    assert writers["trigger_order_emails()"]["triggers"] == [
        "trigger_order_emails_insert ON orders",
        "trigger_order_emails_update ON orders",
    ]
    assert "trigger_order_emails()" in blockers["template_columns"]["message"]
    assert report["template_keys"] == {
        "without_key": 5,
        "pending_without_key": 3,
        "failed_by_validation": 0,
    }
    notifies = {t["trigger_name"]: t["notifies"] for t in report["event_triggers"]}
    assert notifies["trigger_instant_email_processing"] == "instant_email_processing"
    assert {(r["table_name"], r["on_delete"]) for r in report["event_references"]} == {
        ("communication_logs", "SET NULL"),
        ("email_delivery_confirmations", "CASCADE"),
        ("email_processing_queue", "CASCADE"),
    }
    assert report["statuses"] == {"failed": 1, "queued": 4, "sent": 1}
    assert report["status_values"] == ["queued", "processing", "sent", "failed"]
    needing = {n["table"] for n in report["roles_needing_policies"]}
    assert {"communication_events", "smtp_provider_configs"} <= needing
    # No pg_cron in this database: said, not guessed.
    assert report["cron"] == {"installed": False, "version": None, "jobs": []}


def test_app_after_hardening_adds_the_seeds_blockers(
    app_after_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _preflight_cli(app_after_url, monkeypatch)
    assert result.exit_code == 1, result.output
    assert "NO-GO" in result.output
    assert not any(secret in result.output for secret in PLAINTEXTS)

    report = _json_report(app_after_url, monkeypatch, code=1)
    assert report["shape"] == "app_after_hardening"
    assert [b["code"] for b in report["blockers"]] == [
        "uuid_ids",
        "enum_status",
        "text_priority",
        "template_columns",
        "plaintext_credentials",
        "timestamp_without_time_zone",
        "validation_trigger",
    ]
    blockers = {b["code"]: b["message"] for b in report["blockers"]}
    # credentials jsonb filled in clear counts as much as password_encrypted.
    assert report["plaintext_secrets"]["columns"] == ["credentials", "password_encrypted"]
    assert "3 events were failed that way" in blockers["validation_trigger"]
    for column in (
        "smtp_provider_configs.suspended_until",
        "smtp_provider_configs.last_checked",
        "rate_limit_counters.window_start",
    ):
        assert column in blockers["timestamp_without_time_zone"]
    # The big audit's updated_at is not rewritten (mailpipe never reads it), and says so.
    assert "smtp_connection_audit" not in blockers["timestamp_without_time_zone"]
    findings = {f["code"]: f["message"] for f in report["findings"]}
    assert "smtp_connection_audit.updated_at" in findings["timestamp_left"]
    rewrites = [s for s in report["steps"] if s["lock"] == "ACCESS EXCLUSIVE for the rewrite"]
    assert {s["table"] for s in rewrites} == {
        "smtp_provider_configs",
        "rate_limit_counters",
    }
    assert all(s["implemented"] for s in report["steps"])


def test_unknown_statuses_are_counted(app_before_url: str) -> None:
    admin_execute(
        app_before_url,
        [
            "ALTER TYPE communication_event_status ADD VALUE 'delivered'",
            "UPDATE communication_events SET status = 'delivered' WHERE status = 'queued'"
            " AND event_type = 'order_confirmation'",
        ],
    )
    report = asyncio.run(_report(app_before_url))
    assert report.unknown_statuses == {"delivered": 2}
    blocker = next(b for b in report.blockers if b.code == "unknown_statuses")
    assert "delivered (2)" in blocker.message
    # Adoption will not take rows it could neither send nor report: refused, nothing changed.
    shape = fingerprint(app_before_url)
    with pytest.raises(AdoptionRefused, match="unknown_statuses"):
        asyncio.run(_adopt(app_before_url))
    assert fingerprint(app_before_url) == shape


def test_unknown_shape_is_no_go_and_changes_nothing(
    unknown_shape_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = asyncio.run(_fingerprint(unknown_shape_url))
    result = _preflight_cli(unknown_shape_url, monkeypatch)
    assert result.exit_code == 1, result.output
    report = _json_report(unknown_shape_url, monkeypatch, code=1)
    assert asyncio.run(_fingerprint(unknown_shape_url)) == before

    assert report["shape"] == "unknown"
    assert [b["code"] for b in report["blockers"]] == ["unknown_shape", "unknown_shape"]
    messages = [b["message"] for b in report["blockers"]]
    assert messages[0].startswith("communication_events: columns body, channel, created_at")
    assert messages[1].startswith("smtp_provider_configs: columns dsn, slug")
    assert report["steps"] == []


def test_app_shape_is_unchanged_by_preflight(app_after_url: str) -> None:
    async def fingerprint() -> tuple[Any, ...]:
        async with Database(app_after_url, min_size=1, max_size=1) as db:
            schema = await db.fetch_one(query("adoption_schema_fingerprint"))
            events = await db.fetch_all(
                "SELECT * FROM communication_events ORDER BY created_at, id"
            )
            providers = await db.fetch_all("SELECT * FROM smtp_provider_configs ORDER BY name")
        return schema, events, providers

    before = asyncio.run(fingerprint())
    asyncio.run(_report(app_after_url))
    assert asyncio.run(fingerprint()) == before


def test_preflight_does_not_queue_behind_a_lock(app_before_url: str) -> None:
    async def scenario() -> tuple[str, float]:
        async with (
            Database(app_before_url, min_size=1, max_size=1) as holder,
            holder.transaction() as tx,
        ):
            await tx.execute("LOCK TABLE communication_events IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(DatabaseError) as caught:
                await _report(app_before_url)
            return str(caught.value), time.monotonic() - started

    message, waited = asyncio.run(scenario())
    assert "lock timeout" in message and "run it again once that session is done" in message
    assert waited < 30  # lock_timeout is 2 s; the statement_timeout (60 s) never came into play


@pytest.mark.parametrize(
    ("url", "pids", "server_port", "mode"),
    [
        ("postgresql://u@db.example.com:5432/app", (7, 7), 5432, ConnectionMode.DIRECT),
        ("postgresql://u@db.example.com/app", (7, 7), 5432, ConnectionMode.DIRECT),
        ("host=/tmp port=5432 dbname=app", (7, 7), None, ConnectionMode.DIRECT),
        ("postgresql://u@/app?host=127.0.0.1&port=5433", (7, 7), 5433, ConnectionMode.DIRECT),
        (
            "postgresql://u@aws-0-eu.pooler.supabase.com:6543/postgres",
            (7, 7),
            5432,
            ConnectionMode.TRANSACTION_POOLER,
        ),
        ("postgresql://u@pgbouncer:6432/app", (7, 9), 5432, ConnectionMode.TRANSACTION_POOLER),
        (
            "postgresql://u@aws-0-eu.pooler.supabase.com:5432/postgres",
            (7, 7),
            5432,
            ConnectionMode.SESSION_POOLER,
        ),
        ("postgresql://u@pgbouncer:6432/app", (7, 7), 5432, ConnectionMode.SESSION_POOLER),
    ],
)
def test_connection_mode_heuristic(
    url: str, pids: tuple[int, int], server_port: int | None, mode: ConnectionMode
) -> None:
    assert connection_mode(url, *pids, server_port)[0] == mode


def test_transaction_pooler_blocks(app_before_url: str) -> None:
    # Our test server is direct: the judgement on a pooler is checked on the report itself.
    from mailpipe.adoption.preflight import _judge

    report = asyncio.run(_report(app_before_url))
    report.blockers.clear()
    report.connection["mode"] = ConnectionMode.TRANSACTION_POOLER
    report.connection["evidence"] = "port 6543"
    _judge(report)
    assert report.blocker_codes()[0] == "transaction_pooler"
    assert "session pooler" in report.blockers[0].action


def test_preflight_reads_real_pg_cron(cron_app_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    admin_execute(
        cron_app_url,
        [
            # One of the app's own jobs that drains the same queue under another name.
            "SELECT cron.schedule('email-queue-processing', '*/5 * * * *',"
            " $$SELECT net.http_post(url := 'https://fixture-project.supabase.co/functions/v1/"
            "email-cron-automation', headers := jsonb_build_object('Authorization', 'Bearer ' ||"
            " current_setting('app.service_role_key', true)))$$)",
            "SELECT net.http_post('https://fixture-project.supabase.co/functions/v1/x')",
        ],
    )
    result = _preflight_cli(cron_app_url, monkeypatch, "--json")
    assert result.exit_code == 1, result.output
    assert BEARER_KEY not in result.output
    report = json.loads(result.stdout)

    assert report["cron"]["installed"] is True
    jobs = {j["job_name"]: j for j in report["cron"]["jobs"]}
    assert set(jobs) == {*SEED_JOBS, "email-queue-processing"}
    assert all(jobs[name]["active"] and jobs[name]["seed_job"] for name in SEED_JOBS)
    assert jobs["process_email_queue"]["schedule"] == "* * * * *"
    assert jobs["process_email_queue"]["http_host"] == "fixture-project.supabase.co"
    assert [n for n, j in jobs.items() if j["inline_bearer_token"]] == [
        "process_email_queue",
        "monitor_smtp_health",
        "monitor_email_production",
    ]
    assert jobs["snapshot_email_health"]["calls_http"] is False
    assert report["net_queue"] >= 1  # ours, plus any call a job made meanwhile
    findings = {f["code"]: f["message"] for f in report["findings"]}
    assert "mailpipe cutover" in findings["cron_jobs_active"]
    assert "email-queue-processing" in findings["other_email_jobs"]
    assert "3 pg_cron job commands" in findings["bearer_tokens_in_cron"]


def test_partly_hardened_table_is_unknown(app_before_url: str) -> None:
    # Only one of the seed's five columns on the app's provider table: not a state the seed
    # leaves (it runs in one transaction), so nobody can say what else differs.
    admin_execute(app_before_url, ["ALTER TABLE smtp_provider_configs ADD COLUMN status text"])
    report = asyncio.run(_report(app_before_url))
    assert report.shape == "unknown"
    assert report.blocker_codes() == ["unknown_shape"]
    assert report.blockers[0].message == (
        "smtp_provider_configs: the app's table with only part of the seed's columns "
        "(has status; lacks credentials, last_checked, provider_name, suspended_until)"
    )


def test_an_earlier_mailpipe_migrate_on_the_app_is_reported(
    app_before_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `mailpipe db migrate` now refuses the app's database, changing nothing.
    monkeypatch.setenv("DATABASE_URL", app_before_url)
    get_settings.cache_clear()
    try:
        migrate = invoke("db", "migrate")
    finally:
        get_settings.cache_clear()
    assert migrate.exit_code == 1, migrate.output
    assert "run `mailpipe db adopt`" in migrate.output and "nothing was changed" in migrate.output
    # What issue 16 saw with an older mailpipe: 0001 recorded (its CREATE TABLE IF NOT EXISTS
    # skipped the app's tables), then a failure at 0002.
    admin_execute(
        app_before_url,
        [
            "CREATE TABLE schema_migrations (name text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL)",
            "INSERT INTO schema_migrations (name, checksum, duration_ms)"
            " VALUES ('0001_create_base_tables', 'old', 1)",
        ],
    )

    report = _json_report(app_before_url, monkeypatch, code=1)
    assert report["shape"] == "app_before_hardening"
    assert report["applied_migrations"] == ["0001_create_base_tables"]
    assert report["blockers"][0]["code"] == "mailpipe_partially_applied"
    assert "DELETE FROM schema_migrations" in report["blockers"][0]["action"]
