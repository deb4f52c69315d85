"""``mailpipe cutover`` against real pg_cron running the seed's four jobs: pause, drain, hand
over, finalize, roll back; re-runs are no-ops and both pipelines are never active together."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from mailpipe.adoption.cutover import (
    CutoverError,
    CutoverReport,
    DrainState,
    cutover,
    finalize,
    rollback,
)
from mailpipe.config import get_settings
from mailpipe.db import Database, Row
from tests.adoption.conftest import SEED_JOBS
from tests.cli_support import fails, invoke

T = TypeVar("T")

FAST = {"poll_interval": 0.02}


def _with_db(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Database(url, min_size=1, max_size=3) as db:
            return await work(db)

    return asyncio.run(go())


async def _jobs(db: Database) -> list[Row]:
    return await db.fetch_all(
        "SELECT jobid, jobname, schedule, command, active FROM cron.job ORDER BY jobid"
    )


def _outcomes(report: CutoverReport) -> dict[str, str]:
    return {s.step: s.outcome for s in report.steps}


def test_the_jobs_run_under_a_live_pg_cron_scheduler(cron_app_url: str) -> None:
    async def scenario(db: Database) -> tuple[Any, list[Row]]:
        launcher = await db.fetch_value(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'"
        )
        return launcher, await _jobs(db)

    launcher, jobs = _with_db(cron_app_url, scenario)
    assert launcher == 1
    assert [(j["jobname"], j["schedule"], j["active"]) for j in jobs] == [
        ("process_email_queue", "* * * * *", True),
        ("monitor_smtp_health", "*/5 * * * *", True),
        ("monitor_email_production", "*/5 * * * *", True),
        ("snapshot_email_health", "0 0 * * *", True),
    ]


def test_cutover_pauses_waits_for_in_flight_work_then_hands_over(cron_app_url: str) -> None:
    async def scenario(db: Database) -> tuple[CutoverReport, list[DrainState], list[Row]]:
        # In flight under the old pipeline: an HTTP call pg_net has not made yet, an event an
        # edge function is processing, and its email_processing_queue row.
        await db.execute("SELECT net.http_post('https://fixture-project.supabase.co/x')")
        await db.execute(
            "UPDATE communication_events SET status = 'processing',"
            " processing_started_at = now() WHERE event_type = 'customer_welcome'"
        )
        await db.execute(
            "UPDATE email_processing_queue SET status = 'processing'"
            " WHERE event_id = (SELECT id FROM communication_events"
            " WHERE event_type = 'customer_welcome')"
        )
        seen: list[DrainState] = []
        jobs_while_waiting: list[Row] = []

        async def on_progress(state: DrainState) -> None:
            seen.append(state)
            if len(seen) == 1:
                # While the old work finishes, no job may fire any more.
                jobs_while_waiting.extend(await _jobs(db))
                # pg_net's worker makes the call; the edge function finishes the event.
                await db.execute("DELETE FROM net.http_request_queue")
                await db.execute(
                    "UPDATE communication_events SET status = 'sent', sent_at = now()"
                    " WHERE status = 'processing'"
                )
                await db.execute(
                    "UPDATE email_processing_queue SET status = 'completed'"
                    " WHERE status = 'processing'"
                )

        report = await cutover(db, on_progress=on_progress, **FAST)
        return report, seen, jobs_while_waiting

    report, seen, jobs_while_waiting = _with_db(cron_app_url, scenario)

    first = seen[0]
    assert not first.quiet
    assert first.http_queued is not None and first.http_queued >= 1
    assert (first.processing_events, first.processing_queue_rows) == (1, 1)
    assert [j["active"] for j in jobs_while_waiting] == [False] * 4
    assert report.handed_over
    assert _outcomes(report) == {
        **{f"pause {name}": "done" for name in SEED_JOBS},
        "drain": "done",
        "hand over": "done",
    }
    assert [(j["job_name"], j["active"]) for j in report.jobs] == [(n, False) for n in SEED_JOBS]


@pytest.mark.usefixtures("pg_net_worker")
def test_rerun_is_a_noop(cron_app_url: str) -> None:
    async def scenario(db: Database) -> tuple[CutoverReport, list[Row], list[Row]]:
        await cutover(db, **FAST)
        after_first = await _jobs(db)
        again = await cutover(db, **FAST)
        return again, after_first, await _jobs(db)

    again, after_first, after_second = _with_db(cron_app_url, scenario)
    assert after_second == after_first
    assert _outcomes(again) == {
        **{f"pause {name}": "already" for name in SEED_JOBS},
        "drain": "already",
        "hand over": "done",
    }


@pytest.mark.usefixtures("pg_net_worker")
def test_timeout_leaves_every_job_paused_and_says_what_to_do(cron_app_url: str) -> None:
    async def scenario(db: Database) -> tuple[str, list[Row]]:
        await db.execute(
            "UPDATE communication_events SET status = 'processing' WHERE status = 'queued'"
        )
        with pytest.raises(CutoverError) as caught:
            await cutover(db, timeout=0.1, **FAST)
        return str(caught.value), await _jobs(db)

    message, jobs = _with_db(cron_app_url, scenario)
    assert "did not drain within 0.1 s" in message
    assert "4 events processing" in message
    assert "--rollback" in message and "neither pipeline sends" in message
    assert [j["active"] for j in jobs] == [False] * 4


@pytest.mark.usefixtures("pg_net_worker")
def test_rollback_then_finalize_then_nothing_to_roll_back(cron_app_url: str) -> None:
    async def scenario(db: Database) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        await cutover(db, **FAST)
        seen["rollback"] = await rollback(db)
        seen["after_rollback"] = await _jobs(db)
        seen["rollback_again"] = await rollback(db)
        seen["finalize"] = await finalize(db, **FAST)
        seen["after_finalize"] = await _jobs(db)
        seen["finalize_again"] = await finalize(db, **FAST)
        with pytest.raises(CutoverError) as caught:
            await rollback(db)
        seen["rollback_error"] = str(caught.value)
        return seen

    seen = _with_db(cron_app_url, scenario)
    assert _outcomes(seen["rollback"]) == {f"resume {name}": "done" for name in SEED_JOBS}
    assert [j["active"] for j in seen["after_rollback"]] == [True] * 4
    assert _outcomes(seen["rollback_again"]) == {f"resume {n}": "already" for n in SEED_JOBS}
    # finalize pauses and drains first: the jobs were active again (and may have fired in
    # between, which makes the drain "done" rather than "already").
    finalized = _outcomes(seen["finalize"])
    assert finalized.pop("drain") in ("already", "done")
    assert finalized == {
        **{f"pause {name}": "done" for name in SEED_JOBS},
        "hand over": "done",
        **{f"unschedule {name}": "done" for name in SEED_JOBS},
    }
    assert seen["after_finalize"] == []
    assert _outcomes(seen["finalize_again"]) == {
        **{f"pause {name}": "skipped" for name in SEED_JOBS},
        "drain": "already",
        "hand over": "done",
        "unschedule": "already",
    }
    assert "--finalize unscheduled them" in seen["rollback_error"]


@pytest.mark.usefixtures("pg_net_worker")
def test_rollback_refuses_while_mailpipe_holds_events(cron_app_url: str) -> None:
    async def scenario(db: Database) -> tuple[str, list[Row]]:
        await cutover(db, **FAST)
        # mailpipe's deployments started and claimed an event under a lease.
        await db.execute("ALTER TABLE communication_events ADD COLUMN lease_expires_at timestamptz")
        await db.execute(
            "UPDATE communication_events SET status = 'processing',"
            " lease_expires_at = now() + interval '5 minutes' WHERE status = 'queued'"
        )
        with pytest.raises(CutoverError) as caught:
            await rollback(db)
        return str(caught.value), await _jobs(db)

    message, jobs = _with_db(cron_app_url, scenario)
    assert "hold 4 events under a live lease" in message
    assert "stop mailpipe's deployments first" in message
    assert [j["active"] for j in jobs] == [False] * 4


@pytest.mark.usefixtures("pg_net_worker")
def test_extra_jobs_are_handed_over_with_the_seeds(cron_app_url: str) -> None:
    async def scenario(db: Database) -> tuple[CutoverReport, list[Row]]:
        await db.execute(
            "SELECT cron.schedule('email-queue-processing', '*/5 * * * *', 'SELECT 1')"
        )
        report = await cutover(db, jobs=(*SEED_JOBS, "email-queue-processing"), **FAST)
        return report, await _jobs(db)

    report, jobs = _with_db(cron_app_url, scenario)
    assert _outcomes(report)["pause email-queue-processing"] == "done"
    assert all(not j["active"] for j in jobs) and len(jobs) == 5


@pytest.mark.usefixtures("pg_net_worker")
def test_cli_cutover_finalize_rollback(cron_app_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", cron_app_url)
    get_settings.cache_clear()
    try:
        result = invoke("cutover", "--timeout", "30")
        assert result.exit_code == 0, result.output
        assert "paused" in result.output and "start mailpipe's deployments now" in result.output

        result = invoke("cutover", "--rollback", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["action"] == "rollback"
        assert [j["active"] for j in data["jobs"]] == [True] * 4
        assert "fixture-service-role-key" not in result.output

        result = invoke("cutover", "--finalize", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["handed_over"] is True and data["jobs"] == []

        line = fails("cutover", "--rollback")
        assert "--finalize unscheduled them" in line
        result = invoke("cutover", "--finalize", "--rollback")
        assert result.exit_code == 1 and "exclude each other" in result.output
    finally:
        get_settings.cache_clear()


def test_cli_cutover_without_pg_cron_is_one_clear_line(
    app_before_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", app_before_url)
    get_settings.cache_clear()
    try:
        line = fails("cutover")
    finally:
        get_settings.cache_clear()
    assert "pg_cron is not installed in this database" in line


@pytest.mark.usefixtures("pg_net_worker")
def test_cutover_still_pauses_when_mailpipe_already_runs_and_says_so(cron_app_url: str) -> None:
    async def scenario(db: Database) -> tuple[CutoverReport, list[Row]]:
        # mailpipe's deployments were started too early: they hold an event under a lease.
        await db.execute("ALTER TABLE communication_events ADD COLUMN lease_expires_at timestamptz")
        await db.execute(
            "UPDATE communication_events SET status = 'processing',"
            " lease_expires_at = now() + interval '5 minutes'"
            " WHERE event_type = 'customer_welcome'"
        )
        report = await cutover(db, **FAST)
        return report, await _jobs(db)

    report, jobs = _with_db(cron_app_url, scenario)
    outcomes = _outcomes(report)
    assert outcomes["overlap"] == "warning"
    assert "held 1 events while pg_cron was active" in next(
        s.detail for s in report.steps if s.step == "overlap"
    )
    # mailpipe's own leased event is not the old pipeline's work: the drain does not wait on it.
    assert outcomes["drain"] == "already" and report.handed_over
    assert [j["active"] for j in jobs] == [False] * 4
