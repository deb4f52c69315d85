"""monitor_smtp_health: real probes against in-process SMTP servers, audit rows, scores,
suspension and recovery, the CLI and the flow; secrets never leak."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from mailpipe.config import Settings, get_settings
from mailpipe.db import Database
from mailpipe.monitoring import check_providers, health_score
from mailpipe.testing.smtpd import Behaviour, Certificate, SMTPTestServer, free_port
from tests.factories import add_provider, latest_table_artifact, take_events

WRONG_PASSWORD = "wr0ng-Pa55word-do-not-leak"
RIGHT_PASSWORD = "r1ght-Pa55word"


# ---------------------------------------------------------------------------- the formula


def test_health_score_is_100_for_a_fast_provider_that_always_answers() -> None:
    assert health_score([True] * 10, 80.0, 0, 0) == 100.0
    assert health_score([True] * 10, 80.0, 500, 0) == 100.0


def test_health_score_follows_the_documented_formula() -> None:
    # P = 1 / (1 + 0.7), L = (5000 - 2750) / 4500 = 0.5, D = 3 / 4
    expected = round(100 * (0.5 * (1 / 1.7) + 0.2 * 0.5 + 0.3 * 0.75), 1)
    assert health_score([True, False], 2750.0, 3, 1) == expected == 61.9
    # No delivery in the window: the probe terms are rescaled to 100.
    assert health_score([True, False], 2750.0, 0, 0) == round(
        100 * (0.5 * (1 / 1.7) + 0.2 * 0.5) / 0.7, 1
    )


def test_health_score_caps_a_provider_whose_latest_probe_failed() -> None:
    assert health_score([False] + [True] * 9, 100.0, 1000, 0) == 50.0
    assert health_score([False] * 10, None, 0, 0) == 0.0


@pytest.mark.parametrize(
    ("better", "worse"),
    [
        (([True, True, True], 100.0, 0, 0), ([True, False, True], 100.0, 0, 0)),  # probe failures
        (
            ([True, True, False], 100.0, 0, 0),
            ([True, False, True], 100.0, 0, 0),
        ),  # older weigh less
        (([True] * 3, 400.0, 0, 0), ([True] * 3, 3000.0, 0, 0)),  # latency
        (([True] * 3, 3000.0, 0, 0), ([True] * 3, 9000.0, 0, 0)),
        (([True] * 3, 100.0, 90, 10), ([True] * 3, 100.0, 50, 50)),  # deliveries
    ],
)
def test_health_score_moves_the_right_way(better: tuple, worse: tuple) -> None:
    assert health_score(*better) > health_score(*worse)


def test_health_score_needs_a_probe() -> None:
    with pytest.raises(ValueError):
        health_score([], None, 0, 0)


# ---------------------------------------------------------------------------- real probes


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_TEST_WRONG_PASSWORD", WRONG_PASSWORD)
    monkeypatch.setenv("MONITOR_TEST_RIGHT_PASSWORD", RIGHT_PASSWORD)


@pytest.fixture
def settings(tls_certificate: Certificate) -> Settings:
    return Settings(
        smtp_ca_file=tls_certificate.cert_file,
        provider_failure_threshold=2,
        suspension_base_seconds=60,
        suspension_max_seconds=300,
    )


@pytest.fixture
async def fleet(
    db: Database, smtpd_factory: Callable[..., SMTPTestServer], password_env: None
) -> dict[str, Any]:
    """One provider per behaviour the issue names, plus a bad reference and a disabled one."""
    healthy = smtpd_factory()
    stalled = smtpd_factory(Behaviour(ehlo_delay=30))
    guarded = smtpd_factory(Behaviour(auth=("mailer", RIGHT_PASSWORD)))
    tls = smtpd_factory(Behaviour(auth=("mailer", RIGHT_PASSWORD)), tls="starttls")
    # Generous timeouts where a probe must pass: CI machines can be slow under load.
    await add_provider(db, "healthy", healthy, timeout_seconds=20)
    await add_provider(db, "refusing", port=free_port())
    await add_provider(db, "stalling", stalled, timeout_seconds=0.5)
    await add_provider(
        db,
        "wrong-password",
        guarded,
        username="mailer",
        credentials={"password_env": "MONITOR_TEST_WRONG_PASSWORD"},
    )
    await add_provider(
        db,
        "starttls",
        tls,
        tls_mode="starttls",
        username="mailer",
        timeout_seconds=20,
        credentials={"password_env": "MONITOR_TEST_RIGHT_PASSWORD"},
    )
    await add_provider(
        db,
        "no-secret",
        healthy,
        username="mailer",
        credentials={"password_env": "MONITOR_TEST_UNSET_VARIABLE"},
    )
    await add_provider(db, "disabled", healthy, status="disabled")
    return {"healthy": healthy, "tls": tls}


async def audit_rows(db: Database) -> dict[str, dict[str, Any]]:
    rows = await db.fetch_all(
        "SELECT provider_name, host, host(ip_address) AS ip, result, success, latency_ms,"
        "       error_text, connection_attempt_at FROM smtp_connection_audit"
    )
    return {r["provider_name"]: r for r in rows}


async def providers(db: Database) -> dict[str, dict[str, Any]]:
    rows = await db.fetch_all(
        "SELECT provider_name, status, suspended_until, health_score, consecutive_failures,"
        "       last_checked FROM smtp_provider_configs"
    )
    return {r["provider_name"]: r for r in rows}


async def test_every_provider_is_probed_and_audited_once(
    db: Database, fleet: dict[str, Any], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    report = await check_providers(db, settings=settings)

    audit = await audit_rows(db)
    assert {name: row["result"] for name, row in audit.items()} == {
        "healthy": "ok",
        "refusing": "refused",
        "stalling": "timeout",
        "wrong-password": "auth_failed",
        "starttls": "ok",
        "no-secret": "config_error",
    }
    # The address actually connected to; none where no TCP connection was made.
    assert {n: r["ip"] for n, r in audit.items()} == {
        "healthy": "127.0.0.1",
        "stalling": "127.0.0.1",
        "wrong-password": "127.0.0.1",
        "starttls": "127.0.0.1",
        "refusing": None,
        "no-secret": None,
    }
    assert all(r["latency_ms"] >= 0 for r in audit.values())
    assert audit["stalling"]["latency_ms"] >= 500
    assert audit["healthy"]["success"] is True and audit["refusing"]["success"] is False
    assert audit["healthy"]["error_text"] is None
    assert "EHLO" in audit["stalling"]["error_text"]
    assert "535" in audit["wrong-password"]["error_text"]
    assert "MONITOR_TEST_UNSET_VARIABLE" in audit["no-secret"]["error_text"]
    assert len(report.probes) == 6 and len(report.failed) == 4
    # The STARTTLS server really was spoken to over TLS, with AUTH.
    assert fleet["tls"].connections >= 1

    state = await providers(db)
    assert state["disabled"]["last_checked"] is None
    for name in audit:
        assert state[name]["last_checked"] is not None
    assert state["healthy"]["health_score"] == 100
    assert state["starttls"]["health_score"] > 50
    for name in ("refusing", "stalling", "wrong-password", "no-secret"):
        assert state[name]["health_score"] <= 50
        assert state[name]["consecutive_failures"] == 1
        assert state[name]["status"] == "active"  # threshold 2: not yet

    # No secret anywhere: audit rows, logs.
    dumped = json.dumps([dict(r) for r in audit.values()], default=str)
    for secret in (WRONG_PASSWORD, RIGHT_PASSWORD):
        assert secret not in dumped
        assert secret not in caplog.text
        assert secret not in json.dumps(report.rows(), default=str)


async def test_probes_run_concurrently(
    db: Database, fleet: dict[str, Any], settings: Settings
) -> None:
    # Sequential probes would take at least the stalled one's 0.5 s plus every other session;
    # concurrent ones take about the slowest alone.
    started = dt.datetime.now(dt.UTC)
    await check_providers(db, settings=settings)
    audit = await audit_rows(db)
    starts = [r["connection_attempt_at"] for r in audit.values()]
    assert max(starts) - min(starts) < dt.timedelta(seconds=0.4)
    assert min(starts) >= started - dt.timedelta(seconds=1)


async def test_one_unresolvable_host_does_not_stop_the_others(
    db: Database, smtpd: SMTPTestServer, settings: Settings
) -> None:
    await add_provider(db, "nowhere", host="no-such-host.invalid", port=25)
    await add_provider(db, "healthy", smtpd)
    await check_providers(db, settings=settings)
    audit = await audit_rows(db)
    assert audit["healthy"]["result"] == "ok"
    assert audit["nowhere"]["result"] == "dns_error"


async def test_suspension_grows_with_failures_and_a_passed_probe_recovers(
    db: Database, smtpd: SMTPTestServer, settings: Settings
) -> None:
    await add_provider(db, "flaky", smtpd)
    await check_providers(db, settings=settings)
    assert (await providers(db))["flaky"]["health_score"] == 100
    # The provider goes away (here: its config points at a port nobody listens on).
    await db.execute("UPDATE smtp_provider_configs SET port = %s", (free_port(),))
    scores, untils = [], []
    changes = []
    for _ in range(5):
        report = await check_providers(db, settings=settings)
        changes += [(c.provider_name, c.kind) for c in report.changes]
        row = (await providers(db))["flaky"]
        scores.append(row["health_score"])
        untils.append(
            row["suspended_until"]
            and (row["suspended_until"] - row["last_checked"]).total_seconds()
        )
    # Threshold 2: suspended from the 2nd failure, for 60 s, then 120, 240, capped at 300.
    assert [u and round(u, -1) for u in untils] == [None, 60, 120, 240, 300]
    assert changes == [("flaky", "suspended")]
    assert scores[0] <= 50 and scores == sorted(scores, reverse=True)
    assert scores[-1] < scores[1]

    # The provider comes back. It is still suspended, yet probed: the passing probe makes it
    # usable again (half-open).
    await db.execute("UPDATE smtp_provider_configs SET port = %s", (smtpd.port,))
    report = await check_providers(db, settings=settings)
    assert [(c.provider_name, c.kind) for c in report.changes] == [("flaky", "recovered")]
    row = (await providers(db))["flaky"]
    assert row["status"] == "active" and row["suspended_until"] is None
    assert row["consecutive_failures"] == 0
    assert row["health_score"] > scores[-1]
    # More good probes keep raising the score as the failures age out of the history.
    await check_providers(db, settings=settings)
    assert (await providers(db))["flaky"]["health_score"] > row["health_score"]
    results = await db.fetch_all(
        "SELECT result FROM smtp_connection_audit ORDER BY connection_attempt_at"
    )
    assert [r["result"] for r in results] == ["ok"] + ["refused"] * 5 + ["ok"] * 2


async def test_deliveries_weigh_on_the_score(
    db: Database, smtpd: SMTPTestServer, settings: Settings
) -> None:
    await add_provider(db, "good", smtpd)
    await add_provider(db, "bad", smtpd)
    await db.execute(
        "INSERT INTO smtp_delivery_confirmations (provider_name, message_id, recipient_email)"
        " SELECT 'good', 'm' || g, 'a@example.com' FROM generate_series(1, 20) g"
    )
    await db.execute(
        "INSERT INTO delivery_attempts (provider_name, outcome, smtp_code)"
        " SELECT 'bad', 'retry', 451 FROM generate_series(1, 20)"
    )
    await check_providers(db, settings=settings)
    state = await providers(db)
    assert state["good"]["health_score"] == 100
    assert state["bad"]["health_score"] == 70  # probes perfect, deliveries all failed


async def test_dry_run_writes_nothing(
    db: Database, fleet: dict[str, Any], settings: Settings
) -> None:
    report = await check_providers(db, settings=settings, dry_run=True)
    assert len(report.probes) == 6 and not report.recorded
    assert await db.fetch_value("SELECT count(*) FROM smtp_connection_audit") == 0
    assert (
        await db.fetch_value(
            "SELECT count(*) FROM smtp_provider_configs WHERE last_checked IS NOT NULL"
        )
        == 0
    )


# ---------------------------------------------------------------------------- CLI
# The CLI runs its own event loop (asyncio.run), so the async tests call it from a thread.


@pytest.fixture
def cli_env(
    env_database: str, tls_certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("MAILPIPE_SMTP_CA_FILE", str(tls_certificate.cert_file))
    get_settings.cache_clear()
    yield env_database
    get_settings.cache_clear()


async def test_cli_health_check_prints_the_probes(
    db: Database, fleet: dict[str, Any], cli_env: str
) -> None:
    from mailpipe.cli import app

    result = await asyncio.to_thread(CliRunner().invoke, app, ["health", "check", "--json"])
    assert result.exit_code == 1, result.output  # some probes failed
    data = json.loads(result.stdout)
    assert {r["provider"]: r["result"] for r in data["probes"]}["starttls"] == "ok"
    assert data["recorded"] is True
    assert WRONG_PASSWORD not in result.output

    result = await asyncio.to_thread(CliRunner().invoke, app, ["health", "check", "--dry-run"])
    assert "SMTP provider probes" in result.stdout and "wrong-password" in result.stdout
    assert "auth_failed" in result.stdout and WRONG_PASSWORD not in result.stdout
    assert await db.fetch_value("SELECT count(*) FROM smtp_connection_audit") == 6


async def test_cli_health_check_exits_0_when_every_provider_answers(
    db: Database, smtpd: SMTPTestServer, cli_env: str
) -> None:
    from mailpipe.cli import app

    await add_provider(db, "healthy", smtpd)
    result = await asyncio.to_thread(CliRunner().invoke, app, ["health", "check"])
    assert result.exit_code == 0, result.output
    assert "1 of 1 providers answered" in result.stdout


# ---------------------------------------------------------------------------- the flow


async def test_flow_probes_suspends_emits_events_and_publishes_an_artifact(
    prefect_harness: None,
    db: Database,
    fleet: dict[str, Any],
    cli_env: str,
    monkeypatch: pytest.MonkeyPatch,
    prefect_events: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flows.monitor_smtp_health import monitor_smtp_health

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MAILPIPE_PROVIDER_FAILURE_THRESHOLD", "1")
    get_settings.cache_clear()

    summary = await monitor_smtp_health()
    assert summary["probed"] == 6 and summary["ok"] == 2 and summary["failed"] == 4
    assert sorted(summary["suspended"]) == ["no-secret", "refusing", "stalling", "wrong-password"]
    events = take_events(prefect_events, "mailpipe.provider.")
    assert sorted((e.event, e.resource.id) for e in events) == sorted(
        ("mailpipe.provider.suspended", f"mailpipe.smtp-provider.{name}")
        for name in summary["suspended"]
    )

    table = await latest_table_artifact("monitor-smtp-health")
    assert {r["provider"]: r["result"] for r in table}["wrong-password"] == "auth_failed"
    assert json.dumps(table).count("127.0.0.1") >= 4
    for secret in (WRONG_PASSWORD, RIGHT_PASSWORD):
        assert secret not in json.dumps(table)
        assert secret not in caplog.text
        assert secret not in json.dumps([e.model_dump(mode="json") for e in events])

    # The next run: still failing, nothing new to announce; the audit keeps growing.
    summary = await monitor_smtp_health()
    second = await db.fetch_all(
        "SELECT provider_name, result, error_text FROM smtp_connection_audit"
        " ORDER BY id DESC LIMIT 6"
    )
    assert summary["suspended"] == [] and summary["recovered"] == [], second
    assert await db.fetch_value("SELECT count(*) FROM smtp_connection_audit") == 12
