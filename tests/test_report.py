"""``mailpipe report``: a self-contained HTML file that renders in headless Chromium."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mailpipe.cli import app
from mailpipe.db import Database
from mailpipe.report import render_report
from mailpipe.snapshots import COLUMNS, to_dataframe

runner = CliRunner()
START = date(2025, 3, 1)
DAYS = 30
PROVIDERS = ["alpha", "beta", "<b>gamma</b> & co"]  # a hostile name must come out escaped


def synthetic_rows() -> list[dict[str, Any]]:
    """30 days x (3 providers + '*'), with day 12 missing, a beta bounce spike on days 20-21 and
    an alpha complaint spike (feedback) on day 5."""
    rows = []
    for i in range(DAYS):
        day = START + timedelta(days=i)
        if i == 12:
            continue
        per = []
        for k, name in enumerate(PROVIDERS):
            sent = 1000 + 37 * i + 300 * k
            failed = 10 + (i * 7 + k) % 25
            bounces = int(sent * (0.25 if i in (20, 21) and k == 1 else 0.01 + 0.002 * k))
            probes = 288 if k != 2 or i < 25 else 0  # gamma stopped being probed
            fails = (i + k) % 5 if probes else 0
            per.append(
                {
                    "provider_name": name,
                    "events_created": sent + failed,
                    "sent": sent,
                    "failed": failed,
                    "failed_rejected": failed,
                    "retried": 20 + i,
                    "deferred": 5 * k,
                    "suppressed": k,
                    "hard_bounces": bounces,
                    "queue_latency_p50_seconds": 2.0 + k + i / 10,
                    "queue_latency_p95_seconds": 30.0 + 3 * k + i,
                    "connection_attempts": probes,
                    "connection_failures": fails,
                    "probe_latency_mean_ms": 120.0 + k * 40 if probes else None,
                    "probe_latency_p95_ms": 300.0 + k * 50 if probes else None,
                    "health_score": 95.0 - 10 * k,
                    "delivered": sent - sent // 100,
                    "bounced": sent // 250,
                    "complained": sent // 1000 + (10 if i == 5 and k == 0 else 0),
                }
            )
        total = {
            "provider_name": "*",
            "health_score": None,
            "probe_latency_mean_ms": 150.0,
            "probe_latency_p95_ms": 380.0,
            "queue_latency_p50_seconds": 3.0 + i / 10,
            "queue_latency_p95_seconds": 34.0 + i,
        }
        for key in (
            "events_created",
            "sent",
            "failed",
            "failed_rejected",
            "retried",
            "deferred",
            "suppressed",
            "hard_bounces",
            "connection_attempts",
            "connection_failures",
            "delivered",
            "bounced",
            "complained",
        ):
            total[key] = sum(p[key] for p in per)
        for row in [total, *per]:
            full = {
                **dict.fromkeys(COLUMNS, 0),
                **row,
                "snapshot_date": day,
                "timezone": "UTC",
                "day_start": datetime(day.year, day.month, day.day, tzinfo=UTC),
                "day_end": datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1),
                "computed_at": datetime(2025, 4, 1, tzinfo=UTC),
            }
            done = full["sent"] + full["failed"]
            full["delivery_success_rate"] = full["sent"] / done if done else None
            out = full["sent"] + full["hard_bounces"]
            full["hard_bounce_rate"] = full["hard_bounces"] / out if out else None
            probes = full["connection_attempts"]
            full["availability"] = (
                (probes - full["connection_failures"]) / probes if probes else None
            )
            rows.append(full)
    return rows


def render(**kwargs: Any) -> str:
    return render_report(
        to_dataframe(synthetic_rows()),
        start=START,
        end=START + timedelta(days=DAYS - 1),
        timezone_name="UTC",
        generated_at=datetime(2025, 4, 1, 6, 0, tzinfo=UTC),
        **kwargs,
    )


def test_report_is_self_contained_and_escaped() -> None:
    page = render()
    assert page.startswith("<!doctype html>")
    assert page.count("<svg") == 7
    titles = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert titles == [
        "Daily volume (all providers)",
        "Delivery success rate: sent / (sent + failed)",
        "Hard-bounce rate against the alert thresholds",
        "Queue latency, created → sent (all providers)",
        "Provider availability: ok probes / probes",
        "Bounced after acceptance (provider reports / sent) against the SES thresholds",
        "Complaint rate (complaints / sent) against the SES thresholds",
    ]
    # The thresholds are drawn (line + label) in the two bounce charts and the complaint chart.
    assert page.count(">warning 5 %</text>") == 2 and page.count(">critical 10 %</text>") == 2
    assert page.count(">warning 0.1 %</text>") == 1 and page.count(">critical 0.5 %</text>") == 1
    # Feedback over the month: what providers reported after the 250, over the messages sent.
    # Alpha's one-day complaint spike (day 5) stays under SES's 0.1 % over the month.
    days = [r for r in synthetic_rows() if r["provider_name"] == "*"]
    sent = sum(r["sent"] for r in days)
    bounced = sum(r["bounced"] for r in days) / sent
    complained = sum(r["complained"] for r in days) / sent
    assert 0.0005 < complained < 0.001 and 0.003 < bounced < 0.005
    assert f'<div class="card ">Bounced after 250<b>{bounced * 100:.2f} %</b>' in page
    assert f'<div class="card ">Complaint rate<b>{complained * 100:.3f} %</b>' in page
    # Nothing is fetched: no scripts, no links, no external URLs, no web fonts.
    for forbidden in ("<script", "<link", "http://", "https://", "url(", "@import", " src="):
        assert forbidden not in page, forbidden
    assert "<b>gamma</b>" not in page and "&lt;b&gt;gamma&lt;/b&gt; &amp; co" in page
    # The missing day is said, with the command that fills it.
    assert "No snapshot for 1 day(s): 2025-03-13" in page
    assert "mailpipe snapshot --from 2025-03-13 --to 2025-03-13" in page
    # Days 20-21 (beta at 25 %) lift all providers over the warning threshold, not critical.
    totals = [r for r in synthetic_rows() if r["provider_name"] == "*"]
    warned = [r["snapshot_date"] for r in totals if r["hard_bounce_rate"] >= 0.05]
    assert warned == [date(2025, 3, 21), date(2025, 3, 22)]
    assert page.count('<td class="warn">') == 2 and '<td class="crit">' not in page
    assert "Days ≥ warning<b>2</b>" in page and "Days ≥ critical<b>0</b>" in page


def test_thresholds_follow_the_settings() -> None:
    page = render(warning=0.02, critical=None)
    assert (
        ">warning 2 %</text>" in page
        and "critical"
        not in page.split("<h2>")[0].split("Hard-bounce rate against")[1].split("</figure>")[0]
    )


def test_report_command_writes_the_file(env_database: str, tmp_path: Path) -> None:
    async def seed() -> date:
        async with Database(env_database, min_size=1, max_size=1) as db:
            yesterday = await db.fetch_value("SELECT (now() AT TIME ZONE 'UTC')::date - 1")
            await db.execute(
                "INSERT INTO smtp_provider_configs (provider_name, host, created_at)"
                " VALUES ('alpha', 'a.example.com', '2025-01-01')"
            )
            at = datetime.combine(yesterday, datetime.min.time(), UTC) + timedelta(hours=9)
            event = await db.fetch_one(
                "INSERT INTO communication_events (event_type, recipient_email, template_key,"
                " status, provider_name, created_at, sent_at, updated_at) VALUES ('welcome',"
                " 'a@example.com', 'welcome', 'sent', 'alpha', %(t)s,"
                " %(t)s + interval '4 seconds', %(t)s + interval '4 seconds')"
                " RETURNING id",
                {"t": at},
            )
            await db.execute(
                "INSERT INTO smtp_delivery_confirmations (communication_event_id, provider_name,"
                " message_id, created_at) SELECT id, provider_name, message_id, sent_at"
                " FROM communication_events WHERE id = %s",
                (event["id"],),
            )
            return yesterday

    # CLI commands run their own event loop: seed in one first, outside of any loop.
    yesterday = asyncio.run(seed())
    result = runner.invoke(
        app, ["snapshot", "--from", str(yesterday - timedelta(days=2)), "--to", str(yesterday)]
    )
    assert result.exit_code == 0, result.output

    out = tmp_path / "out" / "report.html"
    result = runner.invoke(app, ["report", "--days", "7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # rich wraps at the terminal width, anywhere a space is: compare word by word. The
    # report ends yesterday, or today if midnight passed since the seed (the data are in both).
    words = " ".join(result.output.split())
    assert any(
        " ".join(
            f"wrote {out} ({end - timedelta(days=6)} to {end}: 3 day(s) with "
            "data, 1 provider(s))".split()
        )
        in words
        for end in (yesterday, yesterday + timedelta(days=1))
    ), result.output
    page = out.read_text(encoding="utf-8")
    assert "No snapshot for 4 day(s)" in page and ">alpha</td>" in page
    assert "Sent<b>1</b>" in page and "Delivery success<b>100.00 %</b>" in page


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "headless Chromium is not installed (Debian: apt-get install chromium); "
        "the report's rendering check needs it"
    )


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium()
    page = tmp_path / "report.html"
    page.write_text(render(), encoding="utf-8")
    # No network at all: every host resolves to nothing and the proxy is a dead port.
    offline = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'p'}",
    ]
    dom = subprocess.run(
        [browser, *offline, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The browser parsed the inline SVG: every chart and every point made it to the DOM.
    assert dom.stdout.count("<svg") == 7
    assert dom.stdout.count("<polyline") >= 15

    png = tmp_path / "report.png"
    shot = subprocess.run(
        [browser, *offline, f"--screenshot={png}", "--window-size=1100,2600", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 2600)
    # A blank page compresses to a few kB; five charts and two tables do not.
    assert len(data) > 60_000, len(data)  # the PNG stays in the test's tmp_path to look at
