"""The post-run check through ``mailpipe check worker``: answered once, never lost.

A worker runs in this process as a task (Great Expectations is imported once per test
session); flow runs are played by :func:`quality_checks.post_run_check`. Fake workers are
plain sessions holding the worker's liveness lock, so a test decides exactly when a worker
claims, answers or dies.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from mailpipe import quality, quality_checks
from mailpipe.config import Settings, get_settings
from mailpipe.db import Database
from mailpipe.errors import MailpipeError
from mailpipe.queries import query
from tests.factories import plant_quality_violations, worker


def settings(**changes: object) -> Settings:
    return get_settings().model_copy(update=changes)


async def check_rows(db: Database) -> list[dict[str, object]]:
    return await db.fetch_all(
        "SELECT id, flow_name, status, checked_by, worker_pid,"
        " failed_suites, warning_suites, error, report IS NOT NULL"
        " AS has_report FROM quality_checks ORDER BY id"
    )


async def test_worker_answers_the_flow_run_with_its_report(db: Database, database_url: str) -> None:
    started = dt.datetime.now(dt.UTC)
    await plant_quality_violations(db)

    async with worker(database_url) as task:
        report = await quality_checks.post_run_check(
            db, "process_email_queue", started, flow_run_id="5f0c3c1e-0000-4000-8000-000000000001"
        )
    assert await task.task == 1

    assert [s.name for s in report.failures] == ["communication_events"]
    assert [s.name for s in report.warnings] == ["rate_limit_counters"]
    assert "communication_events.priority_in_range" in report.broken_invariants("fail")
    assert "| 42 |" in report.markdown()
    assert f"by {report.checked_by}." in report.markdown()  # the artifact says who checked
    with pytest.raises(
        quality_checks.DataQualityError, match="communication_events.priority_in_range"
    ):
        quality_checks.enforce_policy(report)
    [row] = await check_rows(db)
    assert row["status"] == "failed" and str(row["checked_by"]).startswith("worker ")
    assert row["failed_suites"] == ["communication_events"]
    assert row["warning_suites"] == ["rate_limit_counters"] and row["has_report"]
    # The Data Docs the report points at were built after the answer went out.
    assert report.docs_url and all(s.docs_url for s in report.suites)
    for url in (report.docs_url, *(s.docs_url for s in report.suites)):
        assert Path(urlsplit(url).path).is_file(), url


async def test_report_round_trips_through_the_table(db: Database, database_url: str) -> None:
    started = dt.datetime.now(dt.UTC)
    await plant_quality_violations(db)
    direct, _ = await quality.acheck_after_run(
        "process_email_queue", started, database_url=database_url
    )

    again = quality.QualityReport.from_dict(json.loads(json.dumps(direct.as_dict(full=True))))

    assert again.markdown() == direct.markdown()
    assert again.as_dict(full=True) == direct.as_dict(full=True)


async def test_without_a_worker_the_flow_run_checks_itself_and_records_it(
    db: Database, database_url: str
) -> None:
    assert await quality_checks.workers_alive(db) == 0
    report = await quality_checks.post_run_check(db, "monitor_smtp_health", None)

    assert report.success and {s.name for s in report.suites} == {
        "smtp_connection_audit",
        "smtp_provider_configs",
    }
    [row] = await check_rows(db)
    assert row["status"] == "passed" and str(row["checked_by"]).startswith("inline ")
    assert row["worker_pid"] is None and row["has_report"]


async def test_a_request_no_worker_claims_is_checked_by_the_flow_run(
    db: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A "worker" that holds the liveness lock but never claims (stuck, or busy elsewhere).
    async with db.listen() as stuck:
        await stuck.fetch_one(query("hold_quality_worker_lock"))
        assert await quality_checks.workers_alive(db) == 1
        with caplog.at_level(logging.WARNING, logger="mailpipe.quality_checks"):
            report = await quality_checks.post_run_check(
                db, "monitor_smtp_health", None, settings=settings(quality_claim_seconds=0.3)
            )

    assert report.success
    [row] = await check_rows(db)
    assert row["status"] == "passed" and str(row["checked_by"]).startswith("inline ")
    assert "no worker claimed it within 0.3 s" in caplog.text


async def test_a_check_whose_worker_dies_is_taken_over(
    db: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with db.listen("mailpipe_quality_checks") as doomed:
        lock = await doomed.fetch_one(query("hold_quality_worker_lock"))
        assert lock is not None
        flow_run = asyncio.create_task(
            quality_checks.post_run_check(
                db, "monitor_smtp_health", None, settings=settings(quality_claim_seconds=60)
            )
        )
        assert await doomed.wait(timeout=30), "the flow run's request was not notified"
        claimed = await doomed.fetch_one(
            query("claim_quality_check"),
            {"checked_by": "worker doomed:1", "worker_pid": lock["pid"]},
        )
        assert claimed is not None and claimed["flow_name"] == "monitor_smtp_health"
    # The session closed: the worker "died" mid-check, its lock went with it.
    with caplog.at_level(logging.WARNING, logger="mailpipe.quality_checks"):
        report = await asyncio.wait_for(flow_run, 60)

    assert report.success
    [row] = await check_rows(db)
    assert row["status"] == "passed" and str(row["checked_by"]).startswith("inline ")
    assert "its worker (worker doomed:1) stopped" in caplog.text
    # A late answer from the dead worker cannot overwrite the flow run's own.
    late = await db.fetch_one(
        query("finish_quality_check"),
        {
            "id": claimed["id"],
            "status": "failed",
            "checked_by": "worker doomed:1",
            "elapsed_seconds": 1.0,
            "failed_suites": ["x"],
            "warning_suites": [],
            "report": None,
            "error": None,
        },
    )
    assert late is None


async def test_a_check_the_worker_cannot_run_fails_the_flow_run_with_the_reason(
    db: Database, database_url: str
) -> None:
    async with worker(database_url):
        with pytest.raises(
            MailpipeError,
            match="could not run: QualityConfigError: no suite lists flow 'not_a_flow'",
        ):
            await quality_checks.post_run_check(db, "not_a_flow", None)
    [row] = await check_rows(db)
    assert row["status"] == "error" and "not_a_flow" in str(row["error"])


async def test_two_workers_answer_each_request_exactly_once(
    db: Database, database_url: str
) -> None:
    async with worker(database_url) as first, worker(database_url) as second:
        assert await quality_checks.workers_alive(db) == 2
        reports = await asyncio.gather(
            *(quality_checks.post_run_check(db, "monitor_smtp_health", None) for _ in range(3))
        )
    assert all(r.success for r in reports)
    assert await first.task + await second.task == 3
    rows = await check_rows(db)
    assert len(rows) == 3 and all(r["status"] == "passed" for r in rows)
    assert all(str(r["checked_by"]).startswith("worker ") for r in rows)


async def test_history_lists_the_checks(db: Database, env_database: str) -> None:
    await quality_checks.post_run_check(db, "monitor_smtp_health", None)
    from mailpipe.cli import app

    result = await asyncio.to_thread(CliRunner().invoke, app, ["check", "history", "--json"])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["workers_alive"] == 0
    [check] = data["checks"]
    assert check["flow_name"] == "monitor_smtp_health" and check["status"] == "passed"
    assert check["docs_url"].startswith("file://")


async def test_history_older_than_the_retention_is_pruned(db: Database, database_url: str) -> None:
    await db.execute(
        "INSERT INTO quality_checks (flow_name, status, requested_at, finished_at,"
        " report) VALUES ('process_email_queue', 'passed', now() - interval"
        " '31 days', now() - interval '31 days', '{}'), ('process_email_queue',"
        " 'passed', now() - interval '29 days', now() - interval '29 days', '{}')"
    )

    await quality_checks.post_run_check(
        db, "monitor_smtp_health", None, settings=settings(quality_keep_days=30)
    )

    ages = await db.fetch_all(
        "SELECT now() - requested_at < interval '30 days' AS recent FROM quality_checks ORDER BY id"
    )
    assert [r["recent"] for r in ages] == [True, True]  # the 29-day-old one and the new one


async def test_the_flow_runs_policies_apply_to_a_workers_answer(
    db: Database, database_url: str
) -> None:
    started = dt.datetime.now(dt.UTC)
    await plant_quality_violations(db)

    async with worker(database_url):
        report = await quality_checks.post_run_check(
            db,
            "process_email_queue",
            started,
            settings=settings(quality_policies={"communication_events": "warn"}),
        )

    assert report.failures == []
    assert {s.name for s in report.warnings} == {"communication_events", "rate_limit_counters"}
    quality_checks.enforce_policy(report)  # nothing with policy fail broke: the run stays Completed


async def test_a_database_behind_the_code_says_to_migrate(db: Database) -> None:
    await db.execute("DROP TABLE quality_checks")

    with pytest.raises(
        MailpipeError,
        match=r'relation "quality_checks" does not exist.*'
        r"run `mailpipe db migrate`",
    ):
        await quality_checks.post_run_check(db, "monitor_smtp_health", None)


async def test_worker_outlives_its_database_connections(db: Database, database_url: str) -> None:
    async with worker(database_url) as task:
        first = await quality_checks.post_run_check(db, "monitor_smtp_health", None)
        # The server drops every connection of the worker (restart, idle timeout, an admin).
        task.clear()
        killed = await db.fetch_value(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name <> 'mailpipe'"
        )
        assert killed >= 2  # its listening session and Great Expectations' pooled connection
        await asyncio.wait_for(task.wait(), 60)  # back: reconnected, holding its lock again
        second = await quality_checks.post_run_check(db, "monitor_smtp_health", None)
    assert await task.task == 2

    assert first.success and second.success, second.markdown()
    assert all(str(r["checked_by"]).startswith("worker ") for r in await check_rows(db))
