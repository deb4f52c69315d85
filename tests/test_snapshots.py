"""snapshot_email_health: exact daily numbers on seeded traffic, idempotence, backfill, export,
the index-bounded plan, and one real flow run with its artifacts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from mailpipe.cli import app
from mailpipe.config import get_settings
from mailpipe.db import Database
from mailpipe.errors import ConfigError, MailpipeError
from mailpipe.snapshots import (
    COLUMNS,
    artifact_table,
    day_bounds,
    explain_day,
    fetch_snapshots,
    headline_markdown,
    load,
    run_snapshots,
    snapshot_day,
    snapshot_range,
)
from tests.factories import run_artifacts, table_rows

runner = CliRunner()
TZ = "Europe/Paris"  # UTC+1 in March: a Paris day is [23:00Z the day before, 23:00Z)
D1, D2, D3 = date(2025, 3, 10), date(2025, 3, 11), date(2025, 3, 12)
SOURCES = {
    "communication_events",
    "smtp_delivery_confirmations",
    "delivery_attempts",
    "smtp_connection_audit",
}


# ---------------------------------------------------------------- seeding
async def add_event(
    db: Database,
    *,
    created: str,
    status: str = "queued",
    provider: str | None = None,
    sent: str | None = None,
    updated: str | None = None,
    error_class: str | None = None,
    recipient: str = "someone@example.com",
) -> dict[str, Any]:
    """One event as the delivery engine leaves it; sent events get their confirmation."""
    row = await db.fetch_one(
        "INSERT INTO communication_events (event_type, recipient_email, template_key, status,"
        " provider_name, created_at, scheduled_at, sent_at, updated_at, error_class,"
        " lease_expires_at)"
        " VALUES ('welcome', %(recipient)s, 'welcome', %(status)s::text, %(provider)s,"
        " %(created)s, %(created)s, %(sent)s, %(updated)s, %(error_class)s,"
        " CASE WHEN %(status)s::text = 'processing' THEN now() END)"
        " RETURNING id, message_id, status, error_class",
        {
            "recipient": recipient,
            "status": status,
            "provider": provider,
            "created": created,
            "sent": sent,
            "updated": updated or sent or created,
            "error_class": error_class,
        },
    )
    assert row is not None
    if sent is not None:
        await db.execute(
            "INSERT INTO smtp_delivery_confirmations (communication_event_id, provider_name,"
            " message_id, recipient_email, smtp_code, smtp_response, created_at)"
            " VALUES (%s, %s, %s, %s, 250, '250 OK', %s)",
            (row["id"], provider, row["message_id"], recipient, sent),
        )
    return row


async def add_attempt(
    db: Database,
    event: dict[str, Any],
    provider: str | None,
    at: str,
    outcome: str,
    code: int | None = None,
) -> None:
    await db.execute(
        "INSERT INTO delivery_attempts (communication_event_id, provider_name, attempted_at,"
        " outcome, smtp_code) VALUES (%s, %s, %s, %s, %s)",
        (event["id"], provider, at, outcome, code),
    )


async def add_probe(db: Database, provider: str, at: str, result: str, latency: float) -> None:
    await db.execute(
        "INSERT INTO smtp_connection_audit (provider_name, host, connection_attempt_at, result,"
        " latency_ms) VALUES (%s, 'smtp.example.com', %s, %s, %s)",
        (provider, at, result, latency),
    )


async def add_providers(db: Database) -> None:
    await db.execute(
        "INSERT INTO smtp_provider_configs (provider_name, host, priority, health_score,"
        " created_at) VALUES ('alpha', 'a.example.com', 1, 90, '2025-01-01'),"
        " ('beta', 'b.example.com', 2, 70, '2025-01-01'),"
        " ('gamma', 'g.example.com', 3, 100, '2025-01-01'),"  # configured, never used
        " ('delta', 'd.example.com', 4, 100, '2025-06-01')"
    )  # added after the seeded days


@pytest.fixture
async def traffic(db: Database) -> Database:
    """Three Paris days: D1 busy, D2 light (a retry sent after midnight), D3 quiet."""
    await add_providers(db)
    # D1 (2025-03-10, Paris)
    e1 = await add_event(
        db,
        created="2025-03-10 09:00+01",
        status="sent",
        provider="alpha",
        sent="2025-03-10 09:00:30+01",
    )
    await add_event(
        db,
        created="2025-03-10 10:00+01",
        status="sent",
        provider="alpha",
        sent="2025-03-10 10:01:30+01",
    )
    await add_event(
        db,
        created="2025-03-10 11:00+01",
        status="sent",
        provider="beta",
        sent="2025-03-10 11:10+01",
    )
    # 00:30 in Paris is still March 9th in UTC: it belongs to D1.
    await add_event(
        db,
        created="2025-03-10 00:30+01",
        status="sent",
        provider="beta",
        sent="2025-03-10 00:30:10+01",
    )
    # Created and retried late on D1, sent at 00:10 on D2 Paris (still D1 in UTC).
    e5 = await add_event(
        db,
        created="2025-03-10 23:30+01",
        status="sent",
        provider="alpha",
        sent="2025-03-11 00:10+01",
    )
    await add_attempt(db, e5, "alpha", "2025-03-10 23:50+01", "retry", 451)
    # The trigger marks an invalid address failed/invalid with no provider.
    e6 = await add_event(db, created="2025-03-10 12:00+01", recipient="not an address")
    assert (e6["status"], e6["error_class"]) == ("failed", "invalid")
    e7 = await add_event(
        db,
        created="2025-03-10 13:00+01",
        status="failed",
        provider="beta",
        updated="2025-03-10 13:01+01",
        error_class="rejected",
    )
    await add_attempt(db, e7, "beta", "2025-03-10 13:01+01", "failed", 554)
    e8 = await add_event(
        db,
        created="2025-03-10 14:00+01",
        status="failed",
        provider="alpha",
        updated="2025-03-10 14:01+01",
        error_class="bounced",
    )
    await add_attempt(db, e8, "alpha", "2025-03-10 14:01+01", "bounced", 550)
    e9 = await add_event(
        db,
        created="2025-03-10 15:00+01",
        status="sent",
        provider="alpha",
        sent="2025-03-10 15:05+01",
    )
    await add_attempt(db, e9, "alpha", "2025-03-10 15:00:05+01", "deferred")
    await add_event(db, created="2025-03-10 16:00+01")  # still queued
    e11 = await add_event(db, created="2025-03-10 17:00+01", status="suppressed")
    await add_attempt(db, e11, None, "2025-03-10 17:00+01", "suppressed")
    for latency, result in ((100, "ok"), (200, "ok"), (300, "ok"), (5000, "timeout")):
        await add_probe(db, "alpha", "2025-03-10 08:00+01", result, latency)
    await add_probe(db, "beta", "2025-03-10 08:00+01", "ok", 50)
    await add_probe(db, "beta", "2025-03-10 23:59+01", "ok", 150)
    # D2 (2025-03-11): one refused probe just after midnight, and a retried-out event.
    await add_probe(db, "alpha", "2025-03-11 00:05+01", "refused", 3)
    e12 = await add_event(
        db,
        created="2025-03-11 10:00+01",
        status="failed",
        provider="beta",
        updated="2025-03-11 10:30+01",
        error_class="retries_exhausted",
    )
    await add_attempt(db, e12, "beta", "2025-03-11 10:00:10+01", "retry", 421)
    await add_attempt(db, e12, "beta", "2025-03-11 10:10+01", "retry", 421)
    # Outside the seeded days, to prove they are not counted.
    await add_event(
        db,
        created="2025-03-09 22:59+01",
        status="sent",
        provider="alpha",
        sent="2025-03-09 23:00+01",
    )
    await add_probe(db, "alpha", "2025-03-13 00:00+01", "ok", 10)  # D3 ends just before
    assert e1["status"] == "sent"
    return db


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MAILPIPE_TIMEZONE", TZ)
    get_settings.cache_clear()
    yield TZ
    get_settings.cache_clear()


def by_provider(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["provider_name"]: r for r in rows}


def pick(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: row[n] for n in names}


ZERO = {
    "events_created": 0,
    "sent": 0,
    "failed": 0,
    "retried": 0,
    "deferred": 0,
    "suppressed": 0,
    "hard_bounces": 0,
    "delivery_success_rate": None,
    "hard_bounce_rate": None,
    "queue_latency_p50_seconds": None,
    "queue_latency_p95_seconds": None,
    "connection_attempts": 0,
    "connection_failures": 0,
    "availability": None,
    "probe_latency_mean_ms": None,
    "probe_latency_p95_ms": None,
}


# ---------------------------------------------------------------- exact numbers
async def test_busy_day_exact_numbers(traffic: Database) -> None:
    snap = await snapshot_day(traffic, D1, TZ)
    rows = by_provider(snap.rows)
    assert [r["provider_name"] for r in snap.rows] == ["*", "alpha", "beta", "gamma"]
    assert "delta" not in rows  # configured only after that day

    assert pick(rows["*"], *ZERO) == {
        "events_created": 11,
        "sent": 5,
        "failed": 3,
        "retried": 1,
        "deferred": 1,
        "suppressed": 1,
        "hard_bounces": 1,
        "delivery_success_rate": 5 / 8,
        "hard_bounce_rate": 1 / 6,
        "queue_latency_p50_seconds": 90.0,
        "queue_latency_p95_seconds": pytest.approx(540.0),
        "connection_attempts": 6,
        "connection_failures": 1,
        "availability": 5 / 6,
        "probe_latency_mean_ms": 160.0,
        "probe_latency_p95_ms": pytest.approx(280.0),
    }
    assert pick(
        rows["*"],
        "failed_invalid",
        "failed_rejected",
        "failed_bounced",
        "failed_retries_exhausted",
        "failed_other",
    ) == {
        "failed_invalid": 1,
        "failed_rejected": 1,
        "failed_bounced": 1,
        "failed_retries_exhausted": 0,
        "failed_other": 0,
    }

    assert pick(rows["alpha"], *ZERO) == {
        "events_created": 5,
        "sent": 3,
        "failed": 1,
        "retried": 1,
        "deferred": 1,
        "suppressed": 0,
        "hard_bounces": 1,
        "delivery_success_rate": 0.75,
        "hard_bounce_rate": 0.25,
        "queue_latency_p50_seconds": 90.0,
        "queue_latency_p95_seconds": pytest.approx(279.0),
        "connection_attempts": 4,
        "connection_failures": 1,
        "availability": 0.75,
        "probe_latency_mean_ms": 200.0,
        "probe_latency_p95_ms": pytest.approx(290.0),
    }
    assert rows["alpha"]["failed_bounced"] == 1

    assert pick(rows["beta"], *ZERO) == {
        "events_created": 3,
        "sent": 2,
        "failed": 1,
        "retried": 0,
        "deferred": 0,
        "suppressed": 0,
        "hard_bounces": 0,
        "delivery_success_rate": pytest.approx(2 / 3),
        "hard_bounce_rate": 0.0,
        "queue_latency_p50_seconds": 305.0,
        "queue_latency_p95_seconds": pytest.approx(570.5),
        "connection_attempts": 2,
        "connection_failures": 0,
        "availability": 1.0,
        "probe_latency_mean_ms": 100.0,
        "probe_latency_p95_ms": pytest.approx(145.0),
    }
    assert rows["beta"]["failed_rejected"] == 1

    assert pick(rows["gamma"], *ZERO) == ZERO  # a provider with no traffic: zeros, not a gap

    first = rows["*"]
    assert first["timezone"] == TZ
    assert first["day_start"] == datetime.fromisoformat("2025-03-09T23:00:00+00:00")
    assert first["day_end"] == datetime.fromisoformat("2025-03-10T23:00:00+00:00")
    # March 2025 is long past: the provider's current score says nothing about that day.
    assert {r["health_score"] for r in snap.rows} == {None}


async def test_retry_across_midnight_lands_on_the_day_it_was_sent(traffic: Database) -> None:
    rows = by_provider((await snapshot_day(traffic, D2, TZ)).rows)
    assert pick(rows["alpha"], *ZERO) == {
        **ZERO,
        "sent": 1,
        "delivery_success_rate": 1.0,
        "hard_bounce_rate": 0.0,
        "queue_latency_p50_seconds": 2400.0,
        "queue_latency_p95_seconds": 2400.0,
        "connection_attempts": 1,
        "connection_failures": 1,
        "availability": 0.0,
    }
    assert pick(rows["beta"], *ZERO) == {
        **ZERO,
        "events_created": 1,
        "failed": 1,
        "retried": 2,
        "delivery_success_rate": 0.0,
    }
    assert rows["beta"]["failed_retries_exhausted"] == 1
    assert pick(
        rows["*"],
        "events_created",
        "sent",
        "failed",
        "retried",
        "delivery_success_rate",
        "queue_latency_p50_seconds",
    ) == {
        "events_created": 1,
        "sent": 1,
        "failed": 1,
        "retried": 2,
        "delivery_success_rate": 0.5,
        "queue_latency_p50_seconds": 2400.0,
    }


async def test_day_boundaries_follow_the_timezone(traffic: Database) -> None:
    # The same data cut in UTC: e4 (00:30 Paris) falls on March 9th; e5's send (00:10 Paris
    # on the 11th = 23:10Z on the 10th) falls on the 10th.
    rows = by_provider((await snapshot_day(traffic, D1, "UTC")).rows)
    assert rows["*"]["timezone"] == "UTC"
    assert rows["beta"]["events_created"] == 2 and rows["beta"]["sent"] == 1
    assert rows["alpha"]["sent"] == 4
    assert rows["*"]["connection_attempts"] == 7  # the 00:05 Paris probe is 23:05Z
    # DST: the last Sunday of March is 23 hours long in Paris, 24 in UTC.
    start, end = await day_bounds(traffic, date(2025, 3, 30), TZ)
    assert end - start == timedelta(hours=23)
    start, end = await day_bounds(traffic, date(2025, 10, 26), TZ)
    assert end - start == timedelta(hours=25)


# ---------------------------------------------------------------- idempotence and backfill
async def test_rerun_replaces_the_day_in_place(traffic: Database) -> None:
    first = await snapshot_day(traffic, D1, TZ)
    again = await snapshot_day(traffic, D1, TZ)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "computed_at"} for r in rows]  # noqa: E731
    assert strip(again.rows) == strip(first.rows)
    assert await traffic.fetch_value("SELECT count(*) FROM email_health_snapshots") == 4

    # New late data and a provider that is gone: the re-run picks up the one, drops the other.
    await add_event(
        traffic,
        created="2025-03-10 18:00+01",
        status="sent",
        provider="alpha",
        sent="2025-03-10 18:00:05+01",
    )
    await traffic.execute("DELETE FROM smtp_provider_configs WHERE provider_name = 'gamma'")
    # The nightly run had recorded a health score; a later re-run cannot know it: kept.
    await traffic.execute(
        "UPDATE email_health_snapshots SET health_score = 55"
        " WHERE snapshot_date = %s AND provider_name = 'alpha'",
        (D1,),
    )
    rows = by_provider((await snapshot_day(traffic, D1, TZ)).rows)
    assert sorted(rows) == ["*", "alpha", "beta"]
    assert rows["alpha"]["sent"] == 4 and rows["*"]["events_created"] == 12
    assert rows["alpha"]["health_score"] == 55
    assert await traffic.fetch_value("SELECT count(*) FROM email_health_snapshots") == 3


async def test_yesterday_records_the_current_health_score(db: Database) -> None:
    await add_providers(db)
    await db.execute(
        "UPDATE smtp_provider_configs SET health_score = 40 WHERE provider_name = 'beta'"
    )
    await db.execute(
        "UPDATE smtp_provider_configs SET status = 'disabled' WHERE provider_name = 'gamma'"
    )
    before = datetime.now(ZoneInfo("UTC")).date() - timedelta(days=1)
    run = await run_snapshots(database=db)  # default: yesterday in MAILPIPE_TIMEZONE (UTC)
    after = datetime.now(ZoneInfo("UTC")).date() - timedelta(days=1)  # midnight may pass
    assert run.start == run.end and run.start in {before, after} and run.timezone == "UTC"
    rows = by_provider(run.last.rows)
    assert sorted(rows) == ["*", "alpha", "beta", "delta", "gamma"]
    assert {p: r["health_score"] for p, r in rows.items()} == {
        "alpha": 90,
        "beta": 40,
        "gamma": 100,
        "delta": 100,
        "*": pytest.approx((90 + 40 + 100) / 3),
    }  # the mean leaves the disabled one out
    assert pick(rows["*"], *ZERO) == ZERO


async def test_backfill_gives_every_day_every_provider(traffic: Database) -> None:
    seen = []
    days = await snapshot_range(traffic, D1 - timedelta(days=1), D3, TZ, on_day=seen.append)
    assert [d.day for d in days] == [date(2025, 3, 9), D1, D2, D3] == [d.day for d in seen]
    stored = await fetch_snapshots(traffic, date(2025, 3, 9), D3)
    assert [(r["snapshot_date"], r["provider_name"]) for r in stored] == [
        (day, p) for day in (date(2025, 3, 9), D1, D2, D3) for p in ("*", "alpha", "beta", "gamma")
    ]
    quiet = [r for r in stored if r["snapshot_date"] == D3]
    assert all(pick(r, *ZERO) == ZERO for r in quiet)
    march_9 = by_provider([r for r in stored if r["snapshot_date"] == date(2025, 3, 9)])
    assert march_9["alpha"]["events_created"] == 1 and march_9["alpha"]["sent"] == 1


async def test_aggregation_reads_the_day_through_indexes(traffic: Database) -> None:
    scans = [
        s
        for s in await explain_day(traffic, D1, TZ, force_index=True)
        if s["relation"] in SOURCES or s["index"]
    ]
    assert scans
    assert not [s for s in scans if s["node"] == "Seq Scan"], scans
    indexes = {s["index"] for s in scans if s["index"]}
    assert {
        "idx_communication_events_created_at",
        "idx_communication_events_sent_at",
        "idx_communication_events_failed_updated_at",
    } <= indexes
    assert any(i.startswith("idx_smtp_connection_audit") for i in indexes)
    # Each range reads the day's rows only: 11 created, 5 sent, 3 failed (of 16 events).
    events = sorted(s["rows"] for s in scans if s["relation"] == "communication_events")
    assert events == [3, 5, 11]
    assert await traffic.fetch_value("SELECT count(*) FROM email_health_snapshots") == 0


# ---------------------------------------------------------------- errors
async def test_ranges_and_timezones_are_checked(db: Database, monkeypatch) -> None:
    with pytest.raises(MailpipeError, match="is after --to"):
        await run_snapshots(D2, D1, database=db)
    with pytest.raises(MailpipeError, match="has not started yet"):
        await run_snapshots(date.today() + timedelta(days=2), database=db)
    monkeypatch.setenv("MAILPIPE_TIMEZONE", "Mars/Olympus_Mons")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="set MAILPIPE_TIMEZONE to an IANA name"):
            await run_snapshots(database=db)
    finally:
        get_settings.cache_clear()


# ---------------------------------------------------------------- pandas, CLI, export
async def test_load_returns_typed_frames(traffic: Database, database_url: str) -> None:
    await snapshot_range(traffic, D1, D3, TZ)
    # load() is synchronous; under a running loop (like a notebook's) it uses a thread.
    frame = load(D1, D2, database_url=database_url)
    assert list(frame.columns) == list(COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == COLUMNS
    assert len(frame) == 8
    alpha = load(D1, D3, "alpha", database_url=database_url)
    assert alpha["sent"].tolist() == [3, 1, 0]
    assert alpha["availability"].isna().tolist() == [False, False, True]
    empty = load(date(2020, 1, 1), date(2020, 1, 2), database_url=database_url)
    assert empty.empty and {c: str(t) for c, t in empty.dtypes.items()} == COLUMNS
    columns = await traffic.fetch_all(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'email_health_snapshots' ORDER BY ordinal_position"
    )
    assert [c["column_name"] for c in columns] == list(COLUMNS)


def test_cli_backfill_export_and_errors(
    traffic: Database, env_database: str, paris: str, tmp_path: Path, monkeypatch
) -> None:
    import pandas as pd

    result = runner.invoke(app, ["snapshot", "--from", str(D1), "--to", str(D3)])
    assert result.exit_code == 0, result.output
    assert "3 day(s), 12 rows written (2025-03-10 to 2025-03-12)" in result.output
    assert "│ 2025-03-10 │ 11 " in result.output and "62.5%" in result.output

    result = runner.invoke(app, ["snapshot", "--from", str(D2), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["snapshot_date"], r["provider_name"]) for r in rows] == [
        ("2025-03-11", p) for p in ("*", "alpha", "beta", "gamma")
    ]

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["snapshot", "export", "--format", "parquet"])
    assert result.exit_code == 0, result.output
    assert "wrote 12 rows (3 days) to email_health_snapshots.parquet" in result.output
    frame = pd.read_parquet(tmp_path / "email_health_snapshots.parquet")
    assert {c: str(t) for c, t in frame.dtypes.items()} == COLUMNS
    assert frame.loc[frame["provider_name"] == "*", "events_created"].tolist() == [11, 1, 0]

    result = runner.invoke(
        app, ["snapshot", "export", "--provider", "*", "--from", str(D2), "--out", "star.csv"]
    )
    assert result.exit_code == 0, result.output
    csv = pd.read_csv(tmp_path / "star.csv")
    assert csv["snapshot_date"].tolist() == ["2025-03-11", "2025-03-12"]
    assert csv["retried"].tolist() == [2, 0]

    for args, message in (
        (["snapshot", "--from", str(D3), "--to", str(D1)], "is after --to 2025-03-10: swap"),
        (["snapshot", "--from", "2999-01-01"], "has not started yet in Europe/Paris"),
        (["snapshot", "export", "--format", "parquet", "--out", "-"], "parquet cannot go to"),
        (["snapshot", "export", "--provider", "nobody"], "no snapshots match"),
        (["report", "--days", "3", "--out", "r.html"], "no snapshots between"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output


# ---------------------------------------------------------------- artifacts and the flow
def test_headline_markdown_compares_with_the_week_before() -> None:
    day = {
        **dict.fromkeys(COLUMNS, 0),
        "snapshot_date": D2,
        "timezone": "UTC",
        "events_created": 150,
        "sent": 120,
        "failed": 30,
        "failed_rejected": 30,
        "delivery_success_rate": 0.8,
        "hard_bounce_rate": 0.02,
        "availability": None,
        "queue_latency_p50_seconds": 4.0,
        "queue_latency_p95_seconds": None,
    }
    previous = [
        {**day, "events_created": 100, "delivery_success_rate": 0.9},
        {**day, "events_created": 50, "delivery_success_rate": None},
    ]
    text = headline_markdown(day, previous)
    assert text.startswith("# Email health on 2025-03-11 (UTC)")
    assert "average of the 2 snapshotted day(s)" in text
    assert "| Events created | 150 | 75 | +100.0 % |" in text
    assert "| Delivery success rate | 80.00 % | 90.00 % | -10.00 pp |" in text
    assert "| Provider availability | - | - | - |" in text
    assert "| Retried | 0 | 0 | ±0 % |" in text
    assert "Failed by reason: rejected 30." in text
    assert "(none yet)" in headline_markdown(day, [])

    table = artifact_table([{"snapshot_date": D2, "rate": 0.1234567891, "n": 3, "x": None}])
    assert table == [{"snapshot_date": "2025-03-11", "rate": 0.123457, "n": 3, "x": None}]
    json.dumps(table)


async def test_flow_run_publishes_artifacts(
    traffic: Database, env_database: str, paris: str, prefect_harness: None
) -> None:
    from flows.snapshot_email_health import snapshot_email_health

    await snapshot_day(traffic, D1, TZ)  # the day before, for the comparison
    state = await snapshot_email_health(start=D2, end=D2, return_state=True)
    assert state.is_completed(), state
    assert await state.aresult() == {
        "start": "2025-03-11",
        "end": "2025-03-11",
        "timezone": TZ,
        "days": 1,
        "rows": 4,
        "seconds": pytest.approx(0.0, abs=30),
    }
    by_key = await run_artifacts(state.state_details.flow_run_id)
    assert sorted(by_key) == [
        "data-quality-snapshot-email-health",
        "email-health-snapshot",
        "email-health-summary",
    ]
    assert "email_health_snapshots" in by_key["data-quality-snapshot-email-health"].data
    table = table_rows(by_key["email-health-snapshot"])
    assert [(r["provider_name"], r["retried"]) for r in table] == [
        ("*", 2),
        ("alpha", 0),
        ("beta", 2),
        ("gamma", 0),
    ]
    markdown = by_key["email-health-summary"].data
    assert "average of the 1 snapshotted day(s)" in markdown
    assert "| Events created | 1 | 11 | -90.9 % |" in markdown


def test_load_without_a_loop(database_url: str) -> None:
    # A plain script: no event loop is running, so load() runs its own.
    async def compute() -> None:
        async with Database(database_url, min_size=1, max_size=1) as db:
            await add_providers(db)
            await snapshot_range(db, D1, D2, TZ)

    asyncio.run(compute())
    frame = load(D1, D2, "gamma", database_url=database_url)
    assert frame["snapshot_date"].dt.date.tolist() == [D1, D2]
    assert frame["events_created"].tolist() == [0, 0]
