"""monitor_email_production: metrics over seeded history, every alert rule's lifecycle, the
webhook, the CLI and the flow."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from mailpipe.alerts import (
    Evaluation,
    apply_alerts,
    evaluate_rules,
    grade,
    notify,
    plan_alerts,
    required_windows,
)
from mailpipe.config import Settings, get_settings
from mailpipe.db import Database
from mailpipe.errors import ConfigError
from mailpipe.metrics import collect_metrics, parse_window, parse_windows
from mailpipe.testing.smtpd import free_port
from tests.factories import add_provider, latest_table_artifact, take_events

MIN = dt.timedelta(minutes=1)
WEBHOOK_TOKEN = "T0KEN-in-the-webhook-path"


# ---------------------------------------------------------------------------- seeding


async def add_sent(
    db: Database,
    n: int,
    provider: str | None = "p1",
    *,
    ago: dt.timedelta = MIN,
    status: str = "accepted",
) -> None:
    await db.execute(
        "INSERT INTO smtp_delivery_confirmations (provider_name, message_id, recipient_email,"
        "                                         status, created_at)"
        " SELECT %s, '<' || gen_random_uuid() || '@t>', 'r' || g || '@example.com', %s,"
        "        now() - %s::interval FROM generate_series(1, %s) g",
        (provider, status, ago, n),
    )


async def add_attempts(
    db: Database, n: int, outcome: str, provider: str | None = "p1", *, ago: dt.timedelta = MIN
) -> None:
    await db.execute(
        "INSERT INTO delivery_attempts (provider_name, outcome, attempted_at)"
        " SELECT %s, %s, now() - %s::interval FROM generate_series(1, %s)",
        (provider, outcome, ago, n),
    )


async def add_events(
    db: Database,
    n: int,
    *,
    status: str = "queued",
    scheduled: dt.timedelta = dt.timedelta(0),
    retry_count: int = 0,
    lease: dt.timedelta | None = None,
) -> None:
    # scheduled / lease: offsets from now (negative: in the past).
    await db.execute(
        "INSERT INTO communication_events (event_type, recipient_email, template_key, status,"
        "                                  scheduled_at, retry_count, lease_expires_at)"
        " SELECT 'welcome', 'u' || g || '@example.com', 'welcome', %s, now() + %s::interval,"
        "        %s, now() + %s::interval FROM generate_series(1, %s) g",
        (status, scheduled, retry_count, lease, n),
    )


async def add_probe(db: Database, provider: str, result: str, *, ago: dt.timedelta = MIN) -> None:
    await db.execute(
        "INSERT INTO smtp_connection_audit (provider_name, host, connection_attempt_at, result,"
        "                                   success, latency_ms)"
        " VALUES (%s, '127.0.0.1', now() - %s::interval, %s, %s, 12)",
        (provider, ago, result, result == "ok"),
    )


async def add_rate_limit(
    db: Database,
    key: str,
    deferred: int,
    *,
    scope: str = "provider",
    window: str = "minute",
    updated: dt.timedelta = dt.timedelta(0),
) -> None:
    await db.execute(
        "INSERT INTO rate_limit_counters (scope, key, window_size, window_start, count,"
        "                                 limit_value, deferred, updated_at)"
        " VALUES (%s, %s, %s, date_trunc(%s, now() - %s::interval), 100, 100, %s,"
        "         now() - %s::interval)"
        " ON CONFLICT (scope, key, window_size, window_start)"
        " DO UPDATE SET deferred = EXCLUDED.deferred, updated_at = EXCLUDED.updated_at",
        (scope, key, window, window, updated, deferred, updated),
    )


# ---------------------------------------------------------------------------- pure parts


def test_windows_parse() -> None:
    assert parse_window("5m") == dt.timedelta(minutes=5)
    assert parse_window(" 24h ") == dt.timedelta(hours=24)
    assert parse_window("30s") == dt.timedelta(seconds=30)
    assert parse_window("2w") == dt.timedelta(days=14)  # the one duration grammar of mailpipe
    assert parse_windows("24h,5m,1h,60m") == ["5m", "1h", "24h"]
    for bad in ("", "5", "0m", "1y", "-5m", "m5", "5 minutes"):
        with pytest.raises(ConfigError):
            parse_window(bad)


def test_grade_picks_the_highest_threshold_reached() -> None:
    assert grade(0.04, 0.05, 0.10) is None
    assert grade(0.05, 0.05, 0.10) == ("warning", 0.05)
    assert grade(0.10, 0.05, 0.10) == ("critical", 0.10)
    assert grade(3, None, 2) == ("critical", 2)
    assert grade(None, 0.05, 0.10) is None


def ev(rule: str, state: str, severity: str | None = None, scope: str = "all") -> Evaluation:
    return Evaluation(rule, scope, state, severity, 1.0, 0.5, "m")


def row(alert_id: int, rule: str, severity: str = "warning", scope: str = "all") -> dict:
    return {"id": alert_id, "rule": rule, "scope": scope, "severity": severity}


def test_plan_alerts_lifecycle() -> None:
    plan = plan_alerts(
        [
            row(1, "bounce_rate"),
            row(2, "failure_rate"),
            row(3, "queue_lag"),
            row(4, "bounce_rate", scope="gone"),
            row(5, "complaint_rate"),
            row(6, "rate_limit_violations"),
        ],
        [
            ev("bounce_rate", "firing", "critical"),  # still firing, escalated
            ev("failure_rate", "ok"),  # cleared
            ev("queue_lag", "firing", "warning"),  # still firing, same severity
            ev("complaint_rate", "no_data"),  # too little traffic: keep
            ev("all_providers_down", "firing", "critical"),  # new
            ev("bounce_rate", "ok", scope="p2"),
        ],
    )  # ok without alert: nothing
    assert [e.rule for e in plan.to_open] == ["all_providers_down"]
    assert [alert_id for alert_id, _ in plan.to_refresh] == [1, 3]
    assert plan.escalated == {1}
    # failure_rate cleared; the bounce_rate alert of a scope no longer evaluated is resolved;
    # rate_limit_violations was not evaluated at all this run, so it is left alone.
    assert sorted(plan.to_resolve) == [2, 4]


# ---------------------------------------------------------------------------- metrics


async def test_metrics_over_seeded_history(db: Database) -> None:
    await add_provider(db, "p1")
    await add_provider(
        db,
        "p2",
        status="suspended",
        suspended_until=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10),
    )
    await add_probe(db, "p1", "ok", ago=2 * MIN)
    await add_probe(db, "p1", "ok")
    await add_probe(db, "p2", "ok", ago=30 * MIN)
    await add_probe(db, "p2", "refused")
    # the outbox now
    await add_events(db, 3, scheduled=-10 * MIN)
    await add_events(db, 2, scheduled=-4 * MIN, retry_count=2)
    await add_events(db, 3, scheduled=60 * MIN)
    await add_events(db, 2, status="processing", lease=-3 * MIN)
    await add_events(db, 1, status="processing", lease=3 * MIN)
    # deliveries
    await add_sent(db, 30, "p1")
    await add_sent(db, 1, "p1", status="complained")
    await add_sent(db, 10, "p2")
    await add_sent(db, 70, "p1", ago=30 * MIN)
    await add_sent(db, 100, "p1", ago=180 * MIN)
    await add_attempts(db, 2, "retry", "p1")
    await add_attempts(db, 4, "failover", "p2")
    await add_attempts(db, 6, "deferred", "p1")
    await add_attempts(db, 2, "suppressed", None)
    await add_attempts(db, 3, "bounced", "p1", ago=30 * MIN)
    await add_attempts(db, 1, "failed", "p1", ago=180 * MIN)
    await db.execute(
        "INSERT INTO email_suppressions (address, kind, reason, created_at) VALUES"
        " ('a@example.com', 'address', 'hard_bounce', now()),"
        " ('b@example.com', 'address', 'manual', now() - interval '1 minute'),"
        " ('c.example', 'domain', 'manual', now() - interval '2 hours')"
    )
    await add_rate_limit(db, "p1", 6)
    await add_rate_limit(db, "example.com", 0, scope="domain", window="hour")
    await add_rate_limit(db, "p2", 3, window="hour", updated=120 * MIN)

    m = await collect_metrics(db, ["5m", "1h", "24h"])

    q = m.queue
    assert (q.queued, q.due, q.retry_backlog, q.processing, q.stuck) == (8, 5, 2, 3, 2)
    assert 595 <= q.queue_lag_seconds <= 630

    w5, p1, p2 = m.window("5m"), m.window("5m", "p1"), m.window("5m", "p2")
    assert (w5.sent, w5.complaints, w5.retries, w5.failovers, w5.deferred, w5.suppressed) == (
        41,
        1,
        2,
        4,
        6,
        2,
    )
    assert (p1.sent, p2.sent, p1.deferred, p2.failovers) == (31, 10, 6, 4)
    assert w5.send_rate_per_minute == pytest.approx(41 / 5)
    assert w5.failure_rate == pytest.approx(6 / 47)
    assert p2.failure_rate == pytest.approx(4 / 14)
    assert w5.bounce_rate == 0
    assert w5.complaint_rate == pytest.approx(1 / 41)
    assert w5.suppressions_added == 2 and w5.limit_windows_exceeded == 1
    assert (p1.availability, p2.availability) == (1.0, 0.0)
    assert w5.availability == pytest.approx(2 / 3)

    h1 = m.window("1h")
    assert (h1.sent, h1.bounced) == (111, 3)
    assert h1.bounce_rate == pytest.approx(3 / 114)
    assert m.window("1h", "p2").availability == 0.5
    d1 = m.window("24h")
    assert (d1.sent, d1.failed, d1.suppressions_added, d1.limit_windows_exceeded) == (211, 1, 3, 2)
    assert m.window("24h", "p1").send_rate_per_minute == pytest.approx(201 / 1440)

    states = {p.name: p for p in m.providers}
    assert states["p1"].up and not states["p2"].up and m.providers_up == 1
    assert [r["key"] for r in m.rate_limit_windows["5m"]] == ["p1"]


async def test_metrics_of_an_idle_pipeline_are_zero_not_errors(db: Database) -> None:
    await add_provider(db, "p1")
    m = await collect_metrics(db, ["5m"])
    w = m.window("5m")
    assert (w.sent, w.attempts, m.queue.queued, m.queue.queue_lag_seconds) == (0, 0, 0, 0.0)
    assert w.failure_rate is None and w.bounce_rate is None and w.complaint_rate is None
    assert m.window("5m", "p1") is not None


# ---------------------------------------------------------------------------- alert lifecycle


@pytest.fixture
def rules_settings() -> Settings:
    return Settings(alert_min_volume=50)


async def cycle(db: Database, settings: Settings) -> list[tuple[str, str, str]]:
    metrics = await collect_metrics(db, required_windows(settings), settings)
    transitions = await apply_alerts(db, evaluate_rules(metrics, settings))
    return sorted((t.kind, t.alert.rule, t.alert.scope) for t in transitions)


async def bounce_seed(db: Database) -> None:
    await add_sent(db, 100)
    await add_attempts(db, 8, "bounced")  # 7.4 %: warning


async def complaint_seed(db: Database) -> None:
    await add_sent(db, 99)
    await add_sent(db, 1, status="complained")  # 1 %: critical


async def failure_seed(db: Database) -> None:
    await add_sent(db, 60)
    await add_attempts(db, 20, "retry")  # 25 %: critical


async def more_sends(db: Database) -> None:
    await add_sent(db, 1000)


async def lag_seed(db: Database) -> None:
    await add_events(db, 1, scheduled=-20 * MIN)


async def lag_fix(db: Database) -> None:
    await db.execute("UPDATE communication_events SET status = 'sent', sent_at = now()")


async def down_seed(db: Database) -> None:
    await db.execute(
        "UPDATE smtp_provider_configs SET status = 'suspended',"
        " suspended_until = now() + interval '10 minutes'"
    )


async def down_fix(db: Database) -> None:
    await db.execute("UPDATE smtp_provider_configs SET status = 'active', suspended_until = NULL")


async def rate_limit_seed(db: Database) -> None:
    await add_rate_limit(db, "p1", 5)


async def rate_limit_fix(db: Database) -> None:
    # Ten quiet minutes later: the window that deferred sends is no longer being hit.
    await db.execute("UPDATE rate_limit_counters SET updated_at = now() - interval '10 minutes'")


RULE_CASES = {
    "bounce_rate": (bounce_seed, more_sends, ["all", "p1"]),
    "complaint_rate": (complaint_seed, more_sends, ["all", "p1"]),
    "failure_rate": (failure_seed, more_sends, ["all", "p1"]),
    "queue_lag": (lag_seed, lag_fix, ["all"]),
    "all_providers_down": (down_seed, down_fix, ["all"]),
    "rate_limit_violations": (rate_limit_seed, rate_limit_fix, ["all"]),
}


@pytest.mark.parametrize("rule", list(RULE_CASES))
async def test_each_rule_fires_and_resolves_exactly_once(
    db: Database, rules_settings: Settings, rule: str
) -> None:
    seed, fix, scopes = RULE_CASES[rule]
    await add_provider(db, "p1")
    await add_probe(db, "p1", "ok")
    assert await cycle(db, rules_settings) == []  # a healthy pipeline raises nothing

    await seed(db)
    assert await cycle(db, rules_settings) == [("opened", rule, s) for s in scopes]
    assert await cycle(db, rules_settings) == []  # still true: no re-alert
    assert await cycle(db, rules_settings) == []
    firing = await db.fetch_all("SELECT scope, occurrences, status FROM alerts ORDER BY scope")
    assert firing == [{"scope": s, "occurrences": 3, "status": "firing"} for s in scopes]

    await fix(db)
    assert await cycle(db, rules_settings) == [("resolved", rule, s) for s in scopes]
    assert await cycle(db, rules_settings) == []
    rows = await db.fetch_all(
        "SELECT rule, status, resolved_at IS NOT NULL AS resolved FROM alerts"
    )
    assert rows == [{"rule": rule, "status": "resolved", "resolved": True}] * len(scopes)

    if fix is not more_sends:  # the condition coming back later is a new incident
        await seed(db)
        assert await cycle(db, rules_settings) == [("opened", rule, s) for s in scopes]
        assert await db.fetch_value("SELECT count(*) FROM alerts") == 2 * len(scopes)


async def test_escalation_is_announced_once_and_severity_follows(
    db: Database, rules_settings: Settings
) -> None:
    await add_provider(db, "p1")
    await add_probe(db, "p1", "ok")
    await bounce_seed(db)  # 8 / 108: warning
    assert await cycle(db, rules_settings) == [
        ("opened", "bounce_rate", "all"),
        ("opened", "bounce_rate", "p1"),
    ]
    await add_attempts(db, 10, "bounced")  # 18 / 118: critical (and a 15 % failure rate)
    assert await cycle(db, rules_settings) == [
        ("escalated", "bounce_rate", "all"),
        ("escalated", "bounce_rate", "p1"),
        ("opened", "failure_rate", "all"),
        ("opened", "failure_rate", "p1"),
    ]
    assert await cycle(db, rules_settings) == []
    rows = await db.fetch_all(
        "SELECT severity, threshold, value FROM alerts WHERE rule = 'bounce_rate'"
    )
    assert {r["severity"] for r in rows} == {"critical"}
    assert {r["threshold"] for r in rows} == {0.10}
    assert all(r["value"] == pytest.approx(18 / 118) for r in rows)


async def test_too_little_traffic_keeps_the_alert_as_it_is(
    db: Database, rules_settings: Settings
) -> None:
    await add_provider(db, "p1")
    await add_probe(db, "p1", "ok")
    await bounce_seed(db)
    await cycle(db, rules_settings)
    # The window empties (the traffic ages out): no verdict, so neither resolved nor refreshed.
    await db.execute("DELETE FROM smtp_delivery_confirmations; DELETE FROM delivery_attempts")
    assert await cycle(db, rules_settings) == []
    rows = await db.fetch_all("SELECT status, occurrences FROM alerts")
    assert rows == [{"status": "firing", "occurrences": 1}] * 2


async def test_concurrent_runs_open_one_alert(db: Database, rules_settings: Settings) -> None:
    await lag_seed(db)
    metrics = await collect_metrics(db, required_windows(rules_settings), rules_settings)
    evaluations = evaluate_rules(metrics, rules_settings)
    results = await asyncio.gather(*(apply_alerts(db, evaluations) for _ in range(4)))
    opened = [t for transitions in results for t in transitions if t.kind == "opened"]
    assert sorted(t.alert.rule for t in opened) == ["all_providers_down", "queue_lag"]
    assert await db.fetch_value("SELECT count(*) FROM alerts") == 2


async def test_no_provider_configured_is_all_providers_down(
    db: Database, rules_settings: Settings
) -> None:
    assert await cycle(db, rules_settings) == [("opened", "all_providers_down", "all")]
    message = await db.fetch_value("SELECT message FROM alerts")
    assert "no SMTP provider is configured" in message


async def test_alerts_table_privileges_and_rls(db: Database, rules_settings: Settings) -> None:
    from mailpipe.errors import DatabaseError

    await lag_seed(db)
    await cycle(db, rules_settings)
    assert (
        await db.fetch_value("SELECT relrowsecurity FROM pg_class WHERE relname = 'alerts'") is True
    )
    async with db.transaction() as tx:
        await tx.execute("SET LOCAL ROLE mailpipe_analyst")
        assert await tx.fetch_value("SELECT count(*) FROM alerts") == 2
    with pytest.raises(DatabaseError, match="permission denied"):
        async with db.transaction() as tx:
            await tx.execute("SET LOCAL ROLE mailpipe_analyst")
            await tx.execute("UPDATE alerts SET status = 'resolved', resolved_at = now()")
    async with db.transaction() as tx:
        await tx.execute("SET LOCAL ROLE mailpipe_app")
        assert len(await tx.fetch_all("SELECT id FROM alerts WHERE status = 'firing'")) == 2


# ---------------------------------------------------------------------------- webhook


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    _Hook.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/{WEBHOOK_TOKEN}"
    server.shutdown()
    server.server_close()


async def test_webhook_receives_each_transition(db: Database, webhook: str) -> None:
    await add_provider(db, "p1")
    await add_probe(db, "p1", "ok")
    await lag_seed(db)
    settings = Settings(alert_webhook_url=webhook)
    metrics = await collect_metrics(db, required_windows(settings), settings)
    transitions = await apply_alerts(db, evaluate_rules(metrics, settings))
    assert await notify(transitions, settings) == 1
    [(path, body)] = _Hook.received
    assert path == f"/hooks/{WEBHOOK_TOKEN}"
    assert body["event"] == "mailpipe.alert.opened"
    assert body["alert"]["rule"] == "queue_lag" and body["alert"]["severity"] == "critical"
    assert body["text"].startswith("[CRITICAL] opened: queue_lag (all)")


async def test_failing_webhook_is_logged_without_its_token(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await lag_seed(db)
    url = f"http://127.0.0.1:{free_port()}/hooks/{WEBHOOK_TOKEN}"
    settings = Settings(alert_webhook_url=url)
    metrics = await collect_metrics(db, required_windows(settings), settings)
    transitions = await apply_alerts(db, evaluate_rules(metrics, settings))
    caplog.set_level(logging.DEBUG)
    assert await notify(transitions, settings) == 0
    assert "alert webhook to 127.0.0.1 failed" in caplog.text
    assert WEBHOOK_TOKEN not in caplog.text


# ---------------------------------------------------------------------------- CLI


async def test_cli_metrics_is_read_only_and_shows_rules(db: Database, env_database: str) -> None:
    from mailpipe.cli import app

    await add_provider(db, "p1")
    await add_probe(db, "p1", "ok")
    await lag_seed(db)
    await bounce_seed(db)
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, app, ["metrics", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["queue"]["due"] == 1
    assert {w["window"] for w in data["windows"]} == {"5m", "1h", "24h"}
    firing = {(r["rule"], r["scope"]) for r in data["rules"] if r["state"] == "firing"}
    assert firing == {("queue_lag", "all"), ("bounce_rate", "all"), ("bounce_rate", "p1")}
    assert await db.fetch_value("SELECT count(*) FROM alerts") == 0

    result = await asyncio.to_thread(runner.invoke, app, ["metrics", "-w", "5m"])
    assert result.exit_code == 0, result.output
    for title in ("Queue now", "Rolling windows", "Providers", "Alert rules now"):
        assert title in result.stdout

    result = await asyncio.to_thread(runner.invoke, app, ["metrics", "-w", "5 minutes"])
    assert result.exit_code == 1 and "is not a duration" in result.output


# ---------------------------------------------------------------------------- the flow


def alert_events(worker: Any) -> list[tuple[str, str]]:
    return sorted((e.event, e.resource.id) for e in take_events(worker, "mailpipe.alert."))


async def test_flow_opens_announces_and_resolves_alerts(
    prefect_harness: None,
    db: Database,
    env_database: str,
    webhook: str,
    monkeypatch: pytest.MonkeyPatch,
    prefect_events: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flows.monitor_email_production import monitor_email_production

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MAILPIPE_ALERT_WEBHOOK_URL", webhook)
    get_settings.cache_clear()
    await add_provider(db, "p1")
    await add_probe(db, "p1", "ok")
    await lag_seed(db)
    await bounce_seed(db)

    summary = await monitor_email_production()
    assert sorted(summary["opened"]) == ["bounce_rate:all", "bounce_rate:p1", "queue_lag:all"]
    assert summary["webhook_delivered"] == 3 and len(_Hook.received) == 3
    assert alert_events(prefect_events) == [
        ("mailpipe.alert.opened", "mailpipe.alert.bounce_rate.all"),
        ("mailpipe.alert.opened", "mailpipe.alert.bounce_rate.p1"),
        ("mailpipe.alert.opened", "mailpipe.alert.queue_lag.all"),
    ]
    table = await latest_table_artifact("email-production-metrics")
    assert {(r["window"], r["scope"]) for r in table} >= {("5m", "all"), ("24h", "p1")}
    assert next(r for r in table if (r["window"], r["scope"]) == ("5m", "all"))["sent"] == 100

    # Five minutes later, nothing changed: no event, no webhook call.
    summary = await monitor_email_production()
    assert summary["opened"] == [] and summary["resolved"] == []
    assert sorted(summary["firing"]) == [
        "bounce_rate:all:warning",
        "bounce_rate:p1:warning",
        "queue_lag:all:critical",
    ]
    assert alert_events(prefect_events) == [] and len(_Hook.received) == 3

    await lag_fix(db)
    await more_sends(db)
    summary = await monitor_email_production()
    assert sorted(summary["resolved"]) == ["bounce_rate:all", "bounce_rate:p1", "queue_lag:all"]
    assert [e for e, _ in alert_events(prefect_events)] == ["mailpipe.alert.resolved"] * 3
    assert len(_Hook.received) == 6

    assert WEBHOOK_TOKEN not in caplog.text
    assert WEBHOOK_TOKEN not in json.dumps(table)
