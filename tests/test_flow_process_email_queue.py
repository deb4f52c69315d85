"""The process_email_queue Prefect flow and ``mailpipe demo``, on a real Prefect API."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from mailpipe.cli import app
from mailpipe.db import Database
from mailpipe.testing.smtpd import SMTPTestServer
from tests.factories import (
    add_provider,
    add_template,
    insert_events,
    run_artifacts,
    statuses,
    worker,
)


@pytest.fixture
async def seeded(db: Database, smtpd: SMTPTestServer, env_database: str) -> Database:
    await add_provider(db, "primary", smtpd)
    await add_template(db)
    await insert_events(db, 40)
    return db


async def test_flow_drains_and_publishes_artifacts(
    prefect_harness, seeded: Database, smtpd: SMTPTestServer
) -> None:

    from flows.process_email_queue import process_email_queue

    state = await process_email_queue(batch_size=15, concurrency=2, return_state=True)
    assert state.is_completed()
    summary = await state.aresult()
    assert summary["sent"] == 40 and summary["batches"] >= 3
    assert len(smtpd.accepted) == 40 and await statuses(seeded) == {"sent": 40}
    by_key = await run_artifacts(state.state_details.flow_run_id)
    assert {"process-email-queue-summary", "process-email-queue-report"} <= set(by_key)
    assert "**40 sent**" in by_key["process-email-queue-report"].data


async def test_flow_drains_with_several_processes(
    prefect_harness, seeded: Database, smtpd: SMTPTestServer
) -> None:
    from flows.process_email_queue import process_email_queue

    summary = await process_email_queue(batch_size=5, processes=2)
    assert summary["sent"] == 40 and len(set(smtpd.accepted_message_ids())) == 40
    assert len(summary["by_provider"]) == 1 and await statuses(seeded) == {"sent": 40}


async def test_flow_rejects_bad_parameters(prefect_harness, env_database: str) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.process_email_queue import process_email_queue

    with pytest.raises(ParameterTypeError):
        await process_email_queue(batch_size=0)


def test_demo_runs_the_pipeline_end_to_end(
    prefect_harness, env_database: str, tmp_path, monkeypatch
) -> None:
    from mailpipe.config import get_settings

    monkeypatch.setenv("MAILPIPE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["demo", "--events", "60"])
    assert result.exit_code == 0, result.output
    captured = list((tmp_path / "maildir" / "new").iterdir())
    assert f"{len(captured)} emails captured" in result.output
    # Of 60 sample events: 2 invalid addresses (i = 7, 57), 1 scheduled later (13),
    # 1 suppressed recipient (21), 1 missing template variable (42).
    assert len(captured) == 55
    assert b"Message-ID: <" in captured[0].read_bytes()
    # The other four flows ran too, against the same database.
    assert "process_email_feedback: 0 provider reports applied, 0 waiting" in result.output
    assert "monitor_smtp_health: 1 provider(s) probed, 1 ok" in result.output
    assert "monitor_email_production: alerts firing:" in result.output
    assert "snapshot_email_health: 2 rows for" in result.output


async def test_flow_post_run_check_is_answered_by_a_running_worker(
    prefect_harness, seeded: Database, database_url: str
) -> None:
    from flows.process_email_queue import process_email_queue

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    run_logs = logging.getLogger("prefect.flow_runs")
    level = run_logs.level
    async with worker(database_url) as running:
        run_logs.addHandler(handler)
        run_logs.setLevel(logging.INFO)  # the test harness may raise it
        try:
            state = await process_email_queue(batch_size=15, return_state=True)
        finally:
            run_logs.removeHandler(handler)
            run_logs.setLevel(level)

    assert state.is_completed() and running.task.result() == 1  # answered once
    [check] = await seeded.fetch_all(
        "SELECT flow_name, flow_run_id, status, checked_by FROM quality_checks"
    )
    assert check["flow_name"] == "process_email_queue" and check["status"] == "passed"
    assert check["flow_run_id"] == state.state_details.flow_run_id
    assert check["checked_by"].startswith("worker ")
    # The run's own log says what was checked, by whom, and where the Data Docs are.
    logs = "\n".join(record.getMessage() for record in records)
    assert "all invariants hold in" in logs and f"({check['checked_by']})" in logs
    assert "Data Docs: file://" in logs
