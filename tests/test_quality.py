"""Data-quality suites: each planted violation fails exactly its expectation; real data passes.

Violations are planted as a bad actor would: plain SQL that bypasses the app, dropping the
CHECK, index or trigger that would stop it in this test's throwaway database. Great
Expectations is imported once per session (it takes seconds); each check is one checkpoint run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from typer.testing import CliRunner

from mailpipe import quality, quality_checks
from mailpipe.config import get_settings
from mailpipe.db import Database, Jsonb
from mailpipe.delivery import drain_queue
from mailpipe.monitoring import check_providers
from mailpipe.snapshots import snapshot_day, today
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer
from tests.factories import add_provider, add_template, insert_events, plant_quality_violations

BOUNCING = "bounce1@example.com"


async def seed(db: Database, smtpd_factory: Callable[..., SMTPTestServer]) -> dict[str, int]:
    """A small but real history, written by the app itself: sends, a retry, a bounce, an
    invalid address, rate-limit counters, probes and today's snapshot."""
    server = smtpd_factory(
        Behaviour(
            rcpt_replies={BOUNCING: "550 5.1.1 no such user"}, data_script=["451 4.3.0 try later"]
        )
    )
    await add_provider(db, "primary", server, per_minute_limit=1000, per_day_limit=100000)
    await add_template(db)
    await insert_events(db, 12)
    await insert_events(db, 1, prefix="bounce")
    await db.execute(
        "INSERT INTO communication_events (event_type, recipient_email,"
        " template_key) VALUES ('welcome', 'not an address', 'welcome')"
    )
    await drain_queue(db, batch_size=5)
    await check_providers(db)
    await snapshot_day(db, await today(db, "UTC"), "UTC")
    counts = await db.fetch_one(
        "SELECT (SELECT count(*) FROM communication_events WHERE status = 'sent') AS sent,"
        " (SELECT count(*) FROM communication_events WHERE retry_count > 0) AS retried,"
        " (SELECT count(*) FROM communication_events WHERE error_class = 'invalid') AS invalid,"
        " (SELECT count(*) FROM smtp_delivery_confirmations) AS confirmations,"
        " (SELECT count(*) FROM delivery_attempts) AS attempts,"
        " (SELECT count(*) FROM rate_limit_counters) AS counters,"
        " (SELECT count(*) FROM smtp_connection_audit) AS probes,"
        " (SELECT count(*) FROM email_health_snapshots) AS snapshots"
    )
    assert counts is not None
    return dict(counts)


def broken(report: quality.QualityReport) -> dict[str, set[object]]:
    """{invariant: the row keys (or values) its sample shows} for every failed expectation."""
    found: dict[str, set[object]] = {}
    for suite in report.suites:
        for r in suite.failed:
            assert r.error is None, r.error
            found[r.invariant] = {
                row["row_key"] if isinstance(row, dict) else row for row in r.sample
            }
    return found


def tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


async def test_seeded_database_passes_every_suite(
    db: Database, database_url: str, smtpd_factory: Callable[..., SMTPTestServer]
) -> None:
    started = dt.datetime.now(dt.UTC)
    counts = await seed(db, smtpd_factory)
    assert counts["sent"] >= 10 and counts["retried"] >= 1 and counts["invalid"] == 1
    assert (
        min(
            counts["confirmations"],
            counts["attempts"],
            counts["counters"],
            counts["probes"],
            counts["snapshots"],
        )
        >= 1
    ), counts
    committed = tree_hash(quality.expectations_dir())

    whole = quality.run_checks(None, None, database_url)
    window = quality.run_checks(None, started, database_url)

    assert broken(whole) == {} and whole.success
    assert broken(window) == {} and window.success
    assert {s.name for s in whole.suites} == set(quality.suite_specs())
    events = next(s for s in whole.suites if s.name == "communication_events")
    assert max(r.element_count or 0 for r in events.results) == 14  # every row was read
    assert Path(urlsplit(whole.docs_url or "").path).is_file()
    # Runs read expectations/ and write only to the results folder.
    assert tree_hash(quality.expectations_dir()) == committed


async def test_communication_events_violations(db: Database, database_url: str) -> None:
    await add_template(db)
    await insert_events(db, 3)
    await db.execute(
        "ALTER TABLE communication_events"
        " DROP CONSTRAINT communication_events_status_check,"
        " DROP CONSTRAINT communication_events_error_class_check,"
        " ALTER COLUMN scheduled_at DROP NOT NULL"
    )
    await db.execute(
        "ALTER TABLE communication_events DISABLE TRIGGER validate_communication_event"
    )
    await db.execute("DROP INDEX idx_communication_events_message_id")
    insert = (
        "INSERT INTO communication_events (event_type, recipient_email, template_key, {})"
        " VALUES ('welcome', 'ann@example.com', 'welcome', {}) RETURNING id"
    )

    async def plant(columns: str, values: str, **params: object) -> int:
        return await db.fetch_value(insert.format(columns, values), params)

    weird = await plant("status", "'weird'")
    bad_class = await plant("status, error_class, last_error", "'failed', 'oops', 'x'")
    bad_address = await db.fetch_value(
        "INSERT INTO communication_events (event_type, recipient_email, template_key)"
        " VALUES ('welcome', 'ann@@example', 'welcome') RETURNING id"
    )
    too_many = await plant("retry_count", "99")
    failed_too_many = await plant(
        "status, retry_count, last_error, error_class",
        "'failed', 7, 'gave up', 'retries_exhausted'",
    )
    unsent = await plant("status", "'sent'")
    no_error = await plant("status, error_class", "'failed', 'rejected'")
    stuck = await plant(
        "status, lease_expires_at, locked_by",
        "'processing', now() - interval '1 hour', 'dead:1:abc'",
    )
    unscheduled = await plant("scheduled_at", "NULL")
    urgent = await plant("priority", "42")
    first = await plant("message_id", "'<dup@x>'")
    second = await plant("message_id", "'<dup@x>'")

    report = quality.run_checks(["communication_events"], None, database_url)

    assert broken(report) == {
        "communication_events.status_in_set": {weird},
        "communication_events.error_class_in_set": {bad_class},
        "communication_events.recipient_email_valid": {bad_address},
        "communication_events.retry_count_within_max": {too_many},
        "communication_events.retry_count_within_max_failed": {failed_too_many},
        "communication_events.sent_has_sent_at": {unsent},
        "communication_events.sent_has_provider": {unsent},
        "communication_events.failed_has_last_error": {no_error},
        "communication_events.lease_not_expired": {stuck},
        "communication_events.scheduled_at_not_null": {unscheduled},
        "communication_events.priority_in_range": {urgent},
        "communication_events.message_id_unique": {first, second},
    }
    assert report.failures and report.failures[0].policy == "fail"


async def test_window_checks_changed_and_in_flight_rows_only(
    db: Database, database_url: str
) -> None:
    await add_template(db)
    await insert_events(db, 3)
    old = await db.fetch_value(
        "INSERT INTO communication_events (event_type, recipient_email, template_key, priority,"
        " updated_at) VALUES ('welcome', 'a@example.com', 'welcome', 42,"
        " now() - interval '2 days') RETURNING id"
    )
    stuck = await db.fetch_value(
        "INSERT INTO communication_events (event_type, recipient_email, template_key, status,"
        " lease_expires_at, updated_at) VALUES ('welcome', 'b@example.com', 'welcome',"
        " 'processing', now() - interval '1 day', now() - interval '2 days') RETURNING id"
    )
    started = dt.datetime.now(dt.UTC)
    new = await db.fetch_value(
        "INSERT INTO communication_events (event_type, recipient_email, template_key, priority)"
        " VALUES ('welcome', 'c@example.com', 'welcome', 43) RETURNING id"
    )

    windowed = quality.run_checks(["communication_events"], started, database_url)
    whole = quality.run_checks(["communication_events"], None, database_url)

    assert broken(windowed) == {
        "communication_events.priority_in_range": {new},
        "communication_events.lease_not_expired": {stuck},
    }
    assert broken(whole)["communication_events.priority_in_range"] == {old, new}
    assert windowed.suites[0].window is not None and whole.suites[0].window is None


async def test_confirmation_violations(
    db: Database, database_url: str, smtpd_factory: Callable[..., SMTPTestServer]
) -> None:
    await seed(db, smtpd_factory)
    await db.execute("DROP INDEX idx_smtp_delivery_confirmations_message_id")
    await db.execute(
        "ALTER TABLE smtp_delivery_confirmations"
        " DROP CONSTRAINT smtp_delivery_confirmations_status_check"
    )
    sent = await db.fetch_one(
        "SELECT c.id, c.message_id, c.communication_event_id"
        " FROM smtp_delivery_confirmations c ORDER BY id LIMIT 1"
    )
    queued = await db.fetch_one(
        "SELECT id, message_id FROM communication_events WHERE status = 'queued' LIMIT 1"
    )
    assert sent and queued
    insert = (
        "INSERT INTO smtp_delivery_confirmations (communication_event_id, provider_name,"
        " message_id, status) VALUES (%s, %s, %s, %s) RETURNING id"
    )
    duplicate = await db.fetch_value(
        insert, (sent["communication_event_id"], "primary", sent["message_id"], "accepted")
    )
    no_message_id = await db.fetch_value(insert, (None, "primary", None, "accepted"))
    unknown = await db.fetch_value(insert, (None, "ghost", "<u@x>", "accepted"))
    weird = await db.fetch_value(
        insert, (sent["communication_event_id"], "primary", "<w@x>", "lost")
    )
    unsent = await db.fetch_value(
        insert, (queued["id"], "primary", queued["message_id"], "accepted")
    )

    report = quality.run_checks(["smtp_delivery_confirmations"], None, database_url)

    assert broken(report) == {
        "smtp_delivery_confirmations.message_id_not_null": {no_message_id},
        "smtp_delivery_confirmations.message_id_unique": {sent["id"], duplicate},
        "smtp_delivery_confirmations.provider_configured": {unknown},
        "smtp_delivery_confirmations.status_in_set": {weird},
        # orphans, an event with another message_id, an event not sent
        "smtp_delivery_confirmations.matches_sent_event": {no_message_id, unknown, weird, unsent},
    }


async def test_provider_violations_never_expose_secrets(
    db: Database, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_provider(db, "good", port=2525, credentials={"password_env": "SMTP_PASSWORD"})
    await db.execute("DROP INDEX idx_smtp_provider_configs_provider_name")
    await db.execute(
        "ALTER TABLE smtp_provider_configs"
        " DROP CONSTRAINT smtp_provider_configs_settings_check,"
        " DROP CONSTRAINT smtp_provider_configs_credentials_is_reference,"
        " DROP CONSTRAINT smtp_provider_configs_status_check"
    )
    insert = (
        "INSERT INTO smtp_provider_configs (provider_name, host, status, suspended_until,"
        " health_score, credentials) VALUES (%s, 'h', %s, %s, %s, %s) RETURNING id"
    )
    first = await db.fetch_value("SELECT id FROM smtp_provider_configs")
    twin = await db.fetch_value(insert, ("good", "active", None, 50, None))
    healthy = await db.fetch_value(insert, ("p2", "active", None, 150, None))
    suspended = await db.fetch_value(insert, ("p3", "suspended", None, 50, None))
    weird = await db.fetch_value(insert, ("p4", "paused", None, 50, None))
    password = await db.fetch_value(
        insert, ("p5", "active", None, 50, Jsonb({"password": "hunter2-secret"}))
    )
    in_env_slot = await db.fetch_value(
        insert, ("p6", "active", None, 50, Jsonb({"password_env": "hunter2 secret!"}))
    )
    as_string = await db.fetch_value(insert, ("p7", "active", None, 50, Jsonb("hunter2-secret")))
    # A password in DATABASE_URL must not leak either (the test server trusts its socket).
    parts = urlsplit(database_url)
    if parts.password is None:
        host = parts.netloc.rpartition("@")[2]
        database_url = urlunsplit(parts._replace(netloc=f"postgres:pg-pass-s3cret@{host}"))
    results = tmp_path / "results"
    monkeypatch.setenv("MAILPIPE_QUALITY_RESULTS_DIR", str(results))
    get_settings.cache_clear()

    report = quality.run_checks(["smtp_provider_configs"], None, database_url)
    get_settings.cache_clear()

    assert broken(report) == {
        "smtp_provider_configs.provider_name_unique": {first, twin},
        "smtp_provider_configs.health_score_in_range": {healthy},
        "smtp_provider_configs.suspended_has_until": {suspended},
        "smtp_provider_configs.status_in_set": {weird},
        "smtp_provider_configs.credentials_are_references": {password, in_env_slot, as_string},
    }
    published = json.dumps(report.as_dict()) + report.markdown()
    written = "".join(p.read_text(errors="replace") for p in results.rglob("*") if p.is_file())
    for secret in ("hunter2", "pg-pass-s3cret"):
        assert secret not in published and secret not in written


async def test_audit_violations(db: Database, database_url: str) -> None:
    await db.execute(
        "ALTER TABLE smtp_connection_audit"
        " DROP CONSTRAINT smtp_connection_audit_result_check,"
        " DROP CONSTRAINT smtp_connection_audit_latency_ms_check"
    )
    insert = (
        "INSERT INTO smtp_connection_audit (provider_name, host, result, latency_ms,"
        " connection_attempt_at) VALUES ('p', 'h', %s, %s, now() + %s::interval)"
        " RETURNING id"
    )
    await db.fetch_value(insert, ("ok", 12.5, "0 s"))
    await db.fetch_value(insert, ("ok", 14.0, "30 s"))  # worker clock a little ahead: fine
    exploded = await db.fetch_value(insert, ("exploded", 3.0, "0 s"))
    future = await db.fetch_value(insert, ("ok", 3.0, "2 hours"))
    negative = await db.fetch_value(insert, ("timeout", -5.0, "0 s"))

    report = quality.run_checks(["smtp_connection_audit"], None, database_url)

    assert broken(report) == {
        "smtp_connection_audit.result_in_set": {exploded},
        "smtp_connection_audit.attempt_not_in_future": {future},
        "smtp_connection_audit.latency_non_negative": {negative},
    }
    assert report.warnings and not report.failures  # policy warn
    quality_checks.enforce_policy(report)  # warn never raises


async def test_rate_limit_violations(db: Database, database_url: str) -> None:
    await db.execute(
        "ALTER TABLE rate_limit_counters"
        " DROP CONSTRAINT rate_limit_counters_count_check,"
        " DROP CONSTRAINT rate_limit_counters_scope_check"
    )
    # One fixed minute (the whole table is checked): now() could cross a minute between rows.
    minute = "2026-01-01 09:30"
    insert = (
        "INSERT INTO rate_limit_counters (scope, key, window_size, window_start, count,"
        " limit_value) VALUES (%s, %s, 'minute', %s::timestamptz, %s, %s)"
    )
    at = f"{minute}+00"
    await db.execute(insert, ("provider", "ok", at, 100, 100))
    await db.execute(insert, ("provider", "lowered", at, 105, 100))  # within the 10% tolerance
    await db.execute(insert, ("provider", "negative", at, -1, 100))
    await db.execute(insert, ("provider", "over", at, 111, 100))
    await db.execute(insert, ("planet", "mars", at, 1, None))

    report = quality.run_checks(["rate_limit_counters"], None, database_url)

    assert broken(report) == {
        "rate_limit_counters.count_non_negative": {f"provider/negative/minute/{minute}"},
        "rate_limit_counters.count_within_limit": {f"provider/over/minute/{minute}"},
        "rate_limit_counters.scope_in_set": {f"planet/mars/minute/{minute}"},
    }


async def test_delivery_attempt_violations(db: Database, database_url: str) -> None:
    await add_template(db)
    [event] = await insert_events(db, 1)
    await db.execute(
        "ALTER TABLE delivery_attempts"
        " DROP CONSTRAINT delivery_attempts_outcome_check,"
        " DROP CONSTRAINT delivery_attempts_communication_event_id_fkey"
    )
    insert = (
        "INSERT INTO delivery_attempts (communication_event_id, provider_name, outcome,"
        " smtp_code, attempted_at) VALUES (%s, 'p', %s, %s, now() + %s::interval)"
        " RETURNING id"
    )
    await db.fetch_value(insert, (event, "retry", 451, "0 s"))
    weird = await db.fetch_value(insert, (event, "teleported", None, "0 s"))
    code = await db.fetch_value(insert, (event, "failed", 999, "0 s"))
    future = await db.fetch_value(insert, (event, "retry", 421, "1 day"))
    orphan = await db.fetch_value(insert, (event + 1000, "failed", 550, "0 s"))

    report = quality.run_checks(["delivery_attempts"], None, database_url)

    assert broken(report) == {
        "delivery_attempts.outcome_in_set": {weird},
        "delivery_attempts.smtp_code_valid": {code},
        "delivery_attempts.attempt_not_in_future": {future},
        "delivery_attempts.event_exists": {orphan},
    }


async def test_snapshot_violations(
    db: Database, database_url: str, smtpd_factory: Callable[..., SMTPTestServer]
) -> None:
    await seed(db, smtpd_factory)
    day = await today(db, "UTC")
    await db.execute(
        "ALTER TABLE email_health_snapshots"
        " DROP CONSTRAINT email_health_snapshots_rates_check,"
        " DROP CONSTRAINT email_health_snapshots_pkey"
    )
    # the all-provider row claims more mail than the providers sent, and more than was created
    await db.execute(
        "UPDATE email_health_snapshots SET sent = sent + 1000"
        " WHERE snapshot_date = %s AND provider_name = '*'",
        (day,),
    )
    # a provider row rated above 100 %, and a copy of it
    await db.execute(
        "UPDATE email_health_snapshots SET delivery_success_rate = 1.5"
        " WHERE snapshot_date = %s AND provider_name = 'primary'",
        (day,),
    )
    await db.execute(
        "INSERT INTO email_health_snapshots SELECT * FROM email_health_snapshots"
        " WHERE snapshot_date = %s AND provider_name = 'primary'",
        (day,),
    )
    # a day with a provider row but no all-provider row
    await db.execute(
        "INSERT INTO email_health_snapshots (snapshot_date, provider_name, timezone,"
        " day_start, day_end) VALUES ('2020-01-01', 'primary', 'UTC',"
        " '2020-01-01', '2020-01-02')"
    )

    report = quality.run_checks(["email_health_snapshots"], None, database_url)

    assert broken(report) == {
        "email_health_snapshots.day_provider_unique": {f"{day}/primary"},
        "email_health_snapshots.delivery_success_rate_in_range": {f"{day}/primary"},
        "email_health_snapshots.sent_within_events": {f"{day}/*"},
        "email_health_snapshots.all_row_matches_providers": {f"{day}/*"},
        "email_health_snapshots.all_row_present": {"2020-01-01/primary"},
    }


async def test_flow_check_fails_on_fail_policy_and_warns_otherwise(
    db: Database, database_url: str
) -> None:
    started = dt.datetime.now(dt.UTC)
    await plant_quality_violations(db)

    report, markdown = await quality.acheck_after_run(
        "process_email_queue", started, database_url=database_url
    )

    assert {s.name for s in report.suites} == set(quality.suites_for_flow("process_email_queue"))
    assert [s.name for s in report.failures] == ["communication_events"]
    assert [s.name for s in report.warnings] == ["rate_limit_counters"]
    assert "communication_events.priority_in_range" in markdown and "| 42 |" in markdown
    with pytest.raises(
        quality_checks.DataQualityError, match="communication_events.priority_in_range"
    ):
        quality_checks.enforce_policy(report)
    transitions = await quality_checks.raise_quality_alerts(db, report)
    firing = await db.fetch_all(
        "SELECT scope FROM alerts WHERE rule = 'data_quality' AND status = 'firing'"
    )
    assert [r["scope"] for r in firing] == ["rate_limit_counters"]
    assert [(t.kind, t.alert.scope) for t in transitions] == [("opened", "rate_limit_counters")]
    # Still broken on the next run: the alert stays open, no new one.
    assert await quality_checks.raise_quality_alerts(db, report) == []

    # MAILPIPE_QUALITY_POLICIES made the suite fail-policy: the run fails instead, and its
    # warning alert resolves rather than staying open forever.
    next(s for s in report.suites if s.name == "rate_limit_counters").policy = "fail"
    transitions = await quality_checks.raise_quality_alerts(db, report)
    assert [(t.kind, t.alert.scope) for t in transitions] == [("resolved", "rate_limit_counters")]


def test_cli_check(env_database: str) -> None:
    from mailpipe.cli import app

    runner = CliRunner()
    clean = runner.invoke(app, ["check", "--suite", "smtp_provider_configs", "--json"])
    unknown = runner.invoke(app, ["check", "--suite", "nope"])
    listed = runner.invoke(app, ["check", "--list", "--json"])

    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.stdout)["success"] is True
    assert unknown.exit_code == 1 and "no suite for nope" in unknown.output
    suites = {s["suite"]: s for s in json.loads(listed.stdout)}
    assert set(suites) == set(quality.suite_specs())
    assert "alert" in suites["rate_limit_counters"]["policy_reason"]  # why it is only warn


async def test_cli_check_exits_1_on_a_broken_invariant(db: Database, env_database: str) -> None:
    await db.execute(
        "ALTER TABLE smtp_provider_configs DROP CONSTRAINT smtp_provider_configs_settings_check"
    )
    await add_provider(db, "p", port=2525, health_score=-3)
    from mailpipe.cli import app

    result = CliRunner().invoke(app, ["check", "--suite", "smtp_provider_configs"])

    assert result.exit_code == 1
    assert "smtp_provider_configs.health_score_in_range" in result.output
    assert "Data Docs: file://" in result.output


def test_committed_gx_project_is_in_sync_and_holds_no_credentials(
    database_url: str, tmp_path: Path
) -> None:
    copy = tmp_path / "expectations"
    shutil.copytree(quality.expectations_dir(), copy)
    before = tree_hash(copy)

    assert quality.sync_config(database_url, project_dir=copy) == []
    assert tree_hash(copy) == before
    config = (copy / "great_expectations.yml").read_text()
    assert "connection_string: ${MAILPIPE_GX_DATABASE_URL}" in config
    assert not re.search(r"\w+://[^\s]*@", config)  # no user@host in any URL
    for spec in quality.suite_specs().values():
        suite = json.loads((copy / "expectations" / f"{spec.name}.json").read_text())
        keys = [e["meta"]["invariant"] for e in suite["expectations"]]
        assert all(k.startswith(f"{spec.name}.") for k in keys) and len(set(keys)) == len(keys)
        assert all(e.get("description") for e in suite["expectations"])


def test_only_the_quality_module_imports_great_expectations(project_root: Path) -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import mailpipe, flows\n"
        "names = [m.name for p in (mailpipe, flows)\n"
        "         for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert 'mailpipe.quality' in sys.modules and 'mailpipe.cli.check' in sys.modules\n"
        "print(len(names), sorted(m for m in sys.modules if m.startswith('great_expectations')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project_root,
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
    ).stdout.split()
    assert int(out[0]) > 20 and out[1:] == ["[]"]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return found


def test_data_quality_is_a_leaf_with_one_gx_module(project_root: Path) -> None:
    package = project_root / "mailpipe" / "quality"
    imports = {p.stem: imported_modules(p) for p in sorted(package.glob("*.py"))}
    leaf_may_use = ("mailpipe.config", "mailpipe.errors", "mailpipe.redaction")
    leaf_may_use += ("mailpipe.serialization", "mailpipe.db.", "mailpipe.quality.")

    def roots(modules: set[str], prefix: str) -> set[str]:
        return {m for m in modules if m == prefix or m.startswith(prefix + ".")}

    for stem, modules in imports.items():
        mailpipe = {m for m in roots(modules, "mailpipe") if m != "mailpipe.db"}
        assert all(m.startswith(leaf_may_use) for m in mailpipe), (stem, mailpipe)
        assert not roots(modules, "prefect"), stem
        assert bool(roots(modules, "great_expectations")) == (stem == "gx"), stem
    # Inside the package, siblings by their own names: `mailpipe.quality` (the facade) is
    # imported by no module of it, so the facade's imports cannot close a cycle.
    assert not any("mailpipe.quality" in modules for modules in imports.values())
    # The coordination uses the leaf; the leaf never uses it, nor the worker.
    for stem in ("quality_checks", "quality_worker"):
        modules = imported_modules(project_root / "mailpipe" / f"{stem}.py")
        assert not roots(modules, "prefect") and not roots(modules, "great_expectations")
    assert not any(roots(m, "mailpipe.quality_checks") for m in imports.values())
    assert not any(roots(m, "mailpipe.quality_worker") for m in imports.values())
