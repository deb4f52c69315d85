"""The sweeper hosted by a deliverer (mailpipe.deploy.sweeper): process_email_queue's
scheduled runs executed in the deliverer's process, on a real Prefect API."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from mailpipe.cli import app
from mailpipe.db import Database
from mailpipe.deploy.recovery import WORKER_LABEL
from mailpipe.deploy.sweeper import HostedSweeper, sweeper_label
from mailpipe.testing.smtpd import SMTPTestServer
from tests.deliverer.support import eventually
from tests.factories import add_provider, add_template, insert_events, run_artifacts, statuses


@pytest.fixture
async def deployment(prefect_harness: None, env_database: str) -> str:
    """A deployment of process_email_queue of its own (no work pool, no schedule, limit 1)
    on the session's Prefect API; returns its full name."""
    from flows.process_email_queue import process_email_queue

    name = f"hosted-{uuid.uuid4().hex[:8]}"
    deployment = await process_email_queue.to_deployment(
        name=name, parameters={"time_budget_seconds": 20}, concurrency_limit=1
    )
    await deployment.apply()
    return f"process_email_queue/{name}"


async def schedule_run(deployment: str, *, in_seconds: float = 0) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=in_seconds)
    async with get_client() as client:
        target = await client.read_deployment_by_name(deployment)
        return await client.create_flow_run_from_deployment(
            target.id, state=Scheduled(scheduled_time=when)
        )


async def read_run(run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(run_id)


async def final_run(run_id: Any, timeout: float = 90) -> Any:
    async def done() -> bool:
        return (await read_run(run_id)).state.is_final()

    await eventually(done, timeout=timeout, what=f"flow run {run_id} ends")
    return await read_run(run_id)


async def test_it_executes_a_scheduled_run_in_this_process(
    ready: Database, smtpd: SMTPTestServer, deployment: str
) -> None:
    await insert_events(ready, 12)
    run = await schedule_run(deployment)
    sweeper = HostedSweeper(deployment=deployment, poll_seconds=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    try:
        finished = await final_run(run.id)
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 60)
    assert finished.state.is_completed(), finished.state
    # Executed here: labelled with this machine's deliverer and this process's pid.
    assert finished.labels[WORKER_LABEL] == sweeper_label()
    assert finished.infrastructure_pid == str(__import__("os").getpid())
    assert stats.taken == 1 and stats.finished == {"COMPLETED": 1}
    assert await statuses(ready) == {"sent": 12} and len(smtpd.accepted) == 12
    # An ordinary flow run of the deployment: its artifacts are there, with its parameters.
    assert "process-email-queue-summary" in await run_artifacts(run.id)
    assert finished.parameters["time_budget_seconds"] == 20


async def test_two_deliverers_execute_each_run_once(
    ready: Database, smtpd: SMTPTestServer, deployment: str
) -> None:
    await insert_events(ready, 30)
    runs = [await schedule_run(deployment) for _ in range(3)]
    sweepers = [HostedSweeper(deployment=deployment, poll_seconds=0.1) for _ in range(2)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in sweepers]
    try:
        finished = [await final_run(r.id) for r in runs]
    finally:
        stop.set()
        stats = await asyncio.gather(*tasks)
    # Limit 1 and CANCEL_NEW are not set here (ENQUEUE): every run ran, one at a time.
    assert [r.state.type.value for r in finished] == ["COMPLETED"] * 3
    assert sum(s.taken for s in stats) == 3
    assert await statuses(ready) == {"sent": 30}
    assert len(smtpd.accepted) == 30 == len(set(smtpd.accepted_message_ids()))


async def test_a_stopping_deliverer_gives_back_the_runs_it_took(
    ready: Database, deployment: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import Abort
    from prefect.states import Pending
    from prefect.utilities.engine import propose_state

    run = await schedule_run(deployment, in_seconds=25)
    sweeper = HostedSweeper(deployment=deployment, poll_seconds=0.1, lookahead_seconds=30)
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    try:
        await eventually(
            lambda: sweeper.stats.taken == 1, timeout=30, what="the run is taken ahead of time"
        )
        assert (await read_run(run.id)).state.is_pending()
        # A worker that saw the run as Scheduled a moment earlier is refused the run.
        async with get_client() as client:
            with pytest.raises(Abort):
                await propose_state(client, Pending(), run.id)
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 30)
    assert stats.given_back == 1 and stats.finished == {}
    back = await read_run(run.id)
    assert back.state.is_scheduled()
    assert abs((back.next_scheduled_start_time - run.next_scheduled_start_time).total_seconds()) < 1
    # Its concurrency slot (limit 1) came back: another deliverer takes and runs it.
    other = HostedSweeper(deployment=deployment, poll_seconds=0.1, lookahead_seconds=30)
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop))
    try:
        assert (await final_run(run.id, timeout=90)).state.is_completed()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_a_run_in_progress_ends_after_its_batch_when_the_deliverer_stops(
    db: Database, smtpd_factory: Any, deployment: str
) -> None:
    from prefect.client.orchestration import get_client

    from mailpipe.testing.smtpd import Behaviour

    slow = smtpd_factory(Behaviour(data_delay=0.05))
    await add_provider(db, "primary", slow)
    await add_template(db)
    ready = db
    await insert_events(ready, 400)
    async with get_client() as client:
        target = await client.read_deployment_by_name(deployment)
        run = await client.create_flow_run_from_deployment(
            target.id, parameters={"batch_size": 5, "concurrency": 1, "time_budget_seconds": 120}
        )
    sweeper = HostedSweeper(deployment=deployment, poll_seconds=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    await eventually(lambda: len(slow.accepted) >= 10, timeout=60, what="the run is sending")
    stop.set()
    stats = await asyncio.wait_for(task, 30)  # not the run's 120 s budget
    assert stats.finished == {"COMPLETED": 1}
    finished = await read_run(run.id)
    assert finished.state.is_completed()
    counts = await statuses(ready)
    # Ended after a batch: what was sent is recorded, the rest waits queued, no lease held.
    assert counts.get("sent", 0) == len(slow.accepted) and 10 <= counts["sent"] < 400
    assert counts["queued"] == 400 - counts["sent"]
    held = await ready.fetch_value(
        "SELECT count(*) FROM communication_events WHERE lease_expires_at IS NOT NULL"
    )
    assert held == 0


async def test_a_killed_deliverers_run_is_crashed_by_its_successor(
    ready: Database, deployment: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Pending
    from prefect.utilities.engine import propose_state

    # What a deliverer killed with -9 leaves: a run it took (Pending, labelled, its pid).
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    run = await schedule_run(deployment, in_seconds=3600)
    async with get_client() as client:
        await propose_state(client, Pending(), run.id)
        await client.update_flow_run_labels(run.id, {WORKER_LABEL: sweeper_label()})
        await client.update_flow_run(run.id, infrastructure_pid=dead)
    successor = HostedSweeper(deployment=deployment, poll_seconds=0.1)
    stop = asyncio.Event()
    stop.set()  # one start-up, no polling
    await asyncio.wait_for(successor.run(stop), 30)
    crashed = await read_run(run.id)
    assert crashed.state.is_crashed()
    assert "left behind" in crashed.state.message


def test_sweeper_without_a_prefect_api_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["deliver", "--sweeper"])
    assert result.exit_code == 1
    assert "--sweeper needs a Prefect API: set PREFECT_API_URL" in result.output
