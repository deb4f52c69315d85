"""The deployments on a real Prefect server: setup, deploy, workers, scale-out, serve and up.

One server (``prefect server start`` through mailpipe's own LocalPrefectServer, SQLite in a
temporary PREFECT_HOME) is shared by the whole module; tests run in file order and each leaves
the deployments' schedules switched off so no scheduled run wanders into the next test.
Workers, ``mailpipe serve`` and ``mailpipe up`` run as real subprocesses; flow runs reach the
test's database (a clone) through DATABASE_URL or the Secret block, and its SMTP server over TCP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import mailpipe.db
from mailpipe import runtime
from mailpipe.cli import app
from mailpipe.config import get_settings
from mailpipe.db import Database
from mailpipe.deploy import OrchestrationError, processes
from mailpipe.deploy.project import load_deployment_specs
from mailpipe.deploy.server import LocalPrefectServer
from mailpipe.errors import ConfigError
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer, free_port
from tests.factories import add_provider, add_template, insert_events, run_artifacts, statuses

PROJECT = Path(__file__).resolve().parent.parent
SPECS = load_deployment_specs(PROJECT / "prefect.yaml")
CRONS = {
    "process_email_queue": "* * * * *",
    "monitor_smtp_health": "*/5 * * * *",
    "monitor_email_production": "*/5 * * * *",
    "snapshot_email_health": "0 0 * * *",
    "process_email_feedback": "* * * * *",
}
TIMEZONE = "Europe/Berlin"
SMTP_PASSWORD = "pw-" + uuid.uuid4().hex  # must never show up in any output
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrefectServer]:
    """A real Prefect server for this module; in-process clients are pointed at it."""
    # Prefect configures logging on its first full import; do it here, not inside CliRunner,
    # whose swapped stderr is closed afterwards (later log records would then fail to print).
    import prefect.main  # noqa: F401
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-server")
    # The scheduler service creates upcoming runs every loop (60 s by default): every 2 s here.
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    }
    with (home / "server.log").open("wb") as log:
        server = LocalPrefectServer(port=free_port(), ui=False, env=env, log=log).start()
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                yield server
        finally:
            server.stop()


def child_env(server: LocalPrefectServer, **extra: str) -> dict[str, str]:
    """Environment for subprocesses: no DATABASE_URL unless given, this module's server."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        PREFECT_API_URL=server.api_url,
        MAILPIPE_PROJECT_DIR=str(PROJECT),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    env.update(extra)
    return env


def prefect(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(
        [processes.prefect_executable(), *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def setup_cli(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[dict[str, str]]:
    """``mailpipe setup prefect --json`` in-process with this environment."""
    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["setup", "prefect", "--json", "--no-prompt"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert SMTP_PASSWORD not in result.output
    return json.loads(result.output)


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


async def read_deployments() -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {d.name: d for d in await client.read_deployments()}


async def scheduled_runs(deployment_ids: list[uuid.UUID]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=deployment_ids),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            )
        )


async def wait_for_scheduled_runs(deployments: dict[str, Any], timeout: float = 60) -> list[Any]:
    """The scheduled runs, once the scheduler has created some for every deployment."""
    ids = {d.id for d in deployments.values()}
    deadline = time.monotonic() + timeout
    while True:
        runs = await scheduled_runs(list(ids))
        if {r.deployment_id for r in runs} == ids:
            return runs
        assert time.monotonic() < deadline, f"no scheduled runs for some of {list(deployments)}"
        await asyncio.sleep(0.5)


async def quiet_schedules() -> None:
    """Switch every schedule off and drop the runs it created: tests start runs themselves."""
    from prefect.client.orchestration import get_client

    deployments = await read_deployments()
    async with get_client() as client:
        for deployment in deployments.values():
            for schedule in deployment.schedules:
                await client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        for run in await scheduled_runs([d.id for d in deployments.values()]):
            await client.delete_flow_run(run.id)


async def start_run(deployment: str, **parameters: Any) -> uuid.UUID:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        target = await client.read_deployment_by_name(deployment)
        run = await client.create_flow_run_from_deployment(target.id, parameters=parameters)
    return run.id


async def wait_for_runs(run_ids: list[uuid.UUID], timeout: float = 240) -> list[Any]:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            runs = [await client.read_flow_run(i) for i in run_ids]
            if all(r.state and r.state.type.value in TERMINAL for r in runs):
                return runs
            assert time.monotonic() < deadline, [(r.name, r.state) for r in runs]
            await asyncio.sleep(0.5)


def sent_in(artifacts: dict[str, Any]) -> int:
    table = json.loads(artifacts["process-email-queue-summary"].data)
    return next(row["events"] for row in table if row["outcome"] == "sent")


async def queue_runs_in_flight() -> int:
    """process_email_queue runs that started and have not finished (any deployment)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    active = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    async with get_client() as client:
        return len(
            await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["process_email_queue"])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active))
                ),
            )
        )


async def settled_queue_checks(db: Database, sent: int, timeout: float = 120) -> list[str]:
    """Who answered each process_email_queue run's post-run data-quality check, once all
    ``sent`` events are sent, no process_email_queue run is in flight and every check has
    finished.

    Every run, the test's or a scheduled one, that found work checks afterwards; a run that
    found the queue empty does not. Schedules stay active in these tests, so a scheduled run
    may drain (some of) the events and still be sending, publishing its artifacts or checking
    when the test's own run completes: hence the wait, and the assertion on all of them.
    """
    deadline = time.monotonic() + timeout
    while True:
        rows = await db.fetch_all(
            "SELECT status, checked_by FROM quality_checks "
            "WHERE flow_name = 'process_email_queue' ORDER BY id"
        )
        done = rows and all(r["status"] in {"passed", "failed", "error"} for r in rows)
        if done and await statuses(db) == {"sent": sent} and not await queue_runs_in_flight():
            return [r["checked_by"] for r in rows]
        assert time.monotonic() < deadline, (
            f"events {await statuses(db)}, checks {rows} after {timeout} s"
        )
        await asyncio.sleep(0.5)


def assert_check_worker_answers(
    out_path: Path,
    process: subprocess.Popen[bytes],
    db: Database,
    ready_queue: Callable[..., Any],
    smtpd: SMTPTestServer,
    events: int,
) -> None:
    """Once the check worker that ``process`` (serve or up) started is ready: queue
    ``events`` events, run process_email_queue on demand, and see every post-run check
    answered by that worker."""
    wait_for_text(out_path, r"data-quality worker \S+ \S+ ready", process)
    # Queued only now: whichever run sends them (this one or a scheduled one) checks after
    # the worker is up.
    run_async(ready_queue(smtpd, events))
    run_id = run_async(start_run("process_email_queue/process_email_queue"))
    [run] = run_async(wait_for_runs([run_id], timeout=120))
    assert run.state.type.value == "COMPLETED", run.state
    checkers = run_async(settled_queue_checks(db, events))
    assert all(c.startswith("worker ") for c in checkers), checkers


def wait_for_text(
    path: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float = 120
) -> str:
    """Wait until the subprocess's output file matches (fails early if it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        assert process.poll() is None, f"exited with {process.returncode}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s:\n{text[-3000:]}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def deployed(prefect_server: LocalPrefectServer, template_url: str) -> dict[str, Any]:
    """`mailpipe setup prefect`, then `prefect deploy --all`; returns the deployments as
    registered (read back before their schedules are switched off for the other tests)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        steps = setup_cli(monkeypatch, DATABASE_URL=template_url, MAILPIPE_TIMEZONE=TIMEZONE)
    started = time.monotonic()
    processes.deploy_all(
        api_url=prefect_server.api_url, project=PROJECT, env=child_env(prefect_server)
    )
    deploy_seconds = time.monotonic() - started
    deployments = run_async(read_deployments())
    runs = run_async(wait_for_scheduled_runs(deployments))
    run_async(quiet_schedules())
    return {
        "setup": steps,
        "deployments": deployments,
        "scheduled": runs,
        "deploy_seconds": deploy_seconds,
    }


@pytest.fixture
def ready_queue(db: Database) -> Callable[..., Any]:
    """Seed one provider at the given SMTP server, the welcome template and ``n`` events."""

    async def seed(smtpd: SMTPTestServer, n: int, **provider: Any) -> None:
        await add_provider(db, "primary", smtpd, max_connections=4, **provider)
        await add_template(db)
        await insert_events(db, n)

    return seed


# --- the server and setup ----------------------------------------------------------------------


def test_server_started_and_port_in_use_is_a_clear_error(
    prefect_server: LocalPrefectServer,
) -> None:
    assert prefect_server.startup_seconds is not None
    print(f"prefect server healthy after {prefect_server.startup_seconds:.1f} s")
    with pytest.raises(OrchestrationError, match=f"port {prefect_server.port} is taken"):
        LocalPrefectServer(port=prefect_server.port).start()


def test_setup_creates_blocks_pool_and_variables(deployed: dict[str, Any]) -> None:
    steps = {(s["kind"], s["name"]): s for s in deployed["setup"]}
    assert steps[("secret block", "mailpipe-database-url")]["action"] in {"created", "updated"}
    assert steps[("work pool", "mailpipe")]["action"] in {"created", "kept"}
    assert steps[("variable", "mailpipe_timezone")]["detail"] == TIMEZONE
    assert steps[("variable", "mailpipe_database_url_block")]["detail"] == "mailpipe-database-url"


def test_setup_is_idempotent_and_creates_smtp_secrets(
    deployed: dict[str, Any], db: Database, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_async(
        add_provider(
            db,
            "vault",
            host="127.0.0.1",
            port=2525,
            username="u",
            credentials={"secret_block": "smtp-vault"},
        )
    )
    run_async(
        add_provider(
            db,
            "envy",
            host="127.0.0.1",
            port=2526,
            username="u",
            credentials={"password_env": "ENVY_PASSWORD"},
        )
    )
    env = {"DATABASE_URL": database_url, "MAILPIPE_TIMEZONE": TIMEZONE}
    first = setup_cli(monkeypatch, **env)
    actions = {s["name"]: s["action"] for s in first}
    assert actions["smtp-vault"] == "missing"  # no value given: reported, not invented
    assert "MAILPIPE_SECRET_SMTP_VAULT" in {s["name"]: s for s in first}["smtp-vault"]["detail"]
    second = setup_cli(monkeypatch, **env, MAILPIPE_SECRET_SMTP_VAULT=SMTP_PASSWORD)
    assert {s["name"]: s["action"] for s in second}["smtp-vault"] == "created"
    third = setup_cli(monkeypatch, **env)
    assert {s["name"]: s["action"] for s in third} == {
        "mailpipe-database-url": "unchanged",
        "smtp-vault": "kept",
        "mailpipe": "kept",
        "mailpipe_timezone": "unchanged",
        "mailpipe_database_url_block": "unchanged",
    }
    assert "envy" not in json.dumps(third)  # password_env providers need nothing on Prefect
    from prefect.blocks.system import Secret

    assert Secret.load("smtp-vault", _sync=True).get() == SMTP_PASSWORD


async def test_database_url_from_secret_block(
    prefect_server: LocalPrefectServer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    await Secret(value=database_url).asave("test-db-url", overwrite=True)
    monkeypatch.setenv("MAILPIPE_DATABASE_URL_BLOCK", "test-db-url")
    get_settings.cache_clear()
    try:
        assert mailpipe.db.database_url() == database_url
        # Inside a running event loop, as in a flow: Database() resolves the URL synchronously.
        async with Database(min_size=1, max_size=1) as db:
            name = await db.fetch_value("SELECT current_database()")
            assert name.startswith("mailpipe_test_") and f"/{name}" in database_url
        monkeypatch.setenv("MAILPIPE_DATABASE_URL_BLOCK", "no-such-block")
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match="'no-such-block'.*mailpipe setup prefect"):
            Database()
    finally:
        get_settings.cache_clear()


# --- prefect deploy --all ----------------------------------------------------------------------


def test_deploy_registers_every_deployment(deployed: dict[str, Any]) -> None:
    print(f"prefect deploy --all: {deployed['deploy_seconds']:.1f} s")
    deployments = deployed["deployments"]
    assert set(deployments) == set(CRONS)
    for spec in SPECS:
        d = deployments[spec.name]
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules] == [
            (CRONS[spec.name], TIMEZONE, True)
        ]
        assert d.entrypoint == spec.entrypoint and d.work_pool_name == "mailpipe"
        assert d.pull_steps == [{"mailpipe.deploy.project.enter_project_directory": {}}]
        assert d.job_variables["env"] == {
            "MAILPIPE_DATABASE_URL_BLOCK": "mailpipe-database-url",
            "MAILPIPE_TIMEZONE": TIMEZONE,
        }
        assert d.description and "mailpipe" in d.tags and d.parameters == spec.parameters
        assert d.enforce_parameter_schema
        assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert d.global_concurrency_limit.limit == spec.concurrency_limit["limit"]
    assert deployments["process_email_queue"].global_concurrency_limit.limit == 4
    # The scheduler created the upcoming runs at once: every minute for the queue.
    queue_id = deployments["process_email_queue"].id
    upcoming = sorted(
        r.expected_start_time for r in deployed["scheduled"] if r.deployment_id == queue_id
    )
    assert len(upcoming) >= 3
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(upcoming)} == {60.0}


def test_deployment_run_is_drained_by_a_worker(
    deployed: dict[str, Any],
    prefect_server: LocalPrefectServer,
    db: Database,
    database_url: str,
    ready_queue: Callable[..., Any],
    smtpd_factory: Callable[..., SMTPTestServer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The provider authenticates with a password that only a Secret block holds, and the worker
    # has no DATABASE_URL: the run finds the database through the mailpipe-database-url block.
    smtpd = smtpd_factory(Behaviour(auth=("mailer", SMTP_PASSWORD)))
    run_async(
        ready_queue(smtpd, 40, username="mailer", credentials={"secret_block": "smtp-primary"})
    )
    steps = setup_cli(
        monkeypatch,
        DATABASE_URL=database_url,
        MAILPIPE_TIMEZONE=TIMEZONE,
        MAILPIPE_SECRET_SMTP_PRIMARY=SMTP_PASSWORD,
    )
    assert {s["name"]: s["action"] for s in steps}["smtp-primary"] in {"created", "updated"}
    env = child_env(prefect_server)
    output = prefect(
        "deployment",
        "run",
        "process_email_queue/process_email_queue",
        "--param",
        "max_events=30",
        "--param",
        "concurrency=1",
        env=env,
    )
    run_id = uuid.UUID(re.search(r"UUID: ([0-9a-f-]{36})", output).group(1))

    started = time.monotonic()
    worker = subprocess.run(
        [processes.prefect_executable(), "worker", "start", "--pool", "mailpipe", "--run-once"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    print(f"worker --run-once: {time.monotonic() - started:.1f} s")
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert SMTP_PASSWORD not in worker.stdout + worker.stderr

    [run] = run_async(wait_for_runs([run_id]))
    assert run.state.type.value == "COMPLETED", run.state
    assert run.parameters == {
        "batch_size": 200,
        "concurrency": 1,
        "time_budget_seconds": 50,
        "max_events": 30,
    }
    artifacts = run_async(run_artifacts(run_id))
    assert set(artifacts) == {
        "process-email-queue-summary",
        "process-email-queue-report",
        "data-quality-process-email-queue",
    }
    assert sent_in(artifacts) == 30
    assert "**30 sent**" in artifacts["process-email-queue-report"].data
    assert run_async(statuses(db)) == {"sent": 30, "queued": 10}
    assert len(smtpd.accepted) == 30
    logs = run_async(_run_logs(run_id))
    assert SMTP_PASSWORD not in logs and database_url not in logs


async def _run_logs(run_id: uuid.UUID) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
        )
    return "\n".join(log.message for log in logs)


# --- scale-out ---------------------------------------------------------------------------------


@pytest.mark.parametrize("events", [1500, pytest.param(10_000, marks=pytest.mark.heavy)])
def test_three_workers_three_runs_send_every_event_exactly_once(
    events: int,
    deployed: dict[str, Any],
    prefect_server: LocalPrefectServer,
    db: Database,
    database_url: str,
    ready_queue: Callable[..., Any],
    smtpd: SMTPTestServer,
    tmp_path: Path,
) -> None:
    run_async(ready_queue(smtpd, events))
    env = child_env(prefect_server, DATABASE_URL=database_url, PREFECT_LOGGING_LEVEL="INFO")
    names = [f"scale-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    logs = [tmp_path / f"{name}.log" for name in names]
    workers = []
    try:
        for name, log in zip(names, logs, strict=True):
            with log.open("wb") as out:
                workers.append(
                    processes.start_worker(
                        api_url=prefect_server.api_url,
                        pool="mailpipe",
                        name=name,
                        project=PROJECT,
                        env=env,
                        limit=1,
                        output=out,
                    )
                )
        run_async(_wait_for_workers(names))
        started = time.monotonic()
        run_ids = [
            run_async(start_run("process_email_queue/process_email_queue", time_budget_seconds=600))
            for _ in range(3)
        ]
        runs = run_async(wait_for_runs(run_ids, timeout=280))
        elapsed = time.monotonic() - started
    finally:
        for worker in workers:
            processes.stop_process(worker)

    assert [r.state.type.value for r in runs] == ["COMPLETED"] * 3, [r.state for r in runs]
    per_run = [sent_in(run_async(run_artifacts(r.id))) for r in runs]
    print(f"{events} events, 3 workers, 3 runs: {elapsed:.1f} s, sent per run {per_run}")
    assert sum(per_run) == events
    assert run_async(statuses(db)) == {"sent": events}
    message_ids = smtpd.accepted_message_ids()
    assert len(message_ids) == len(set(message_ids)) == events  # exactly once, none twice
    # Who ran what: a worker that lost the race for a run logs "Aborted submission" for it.
    texts = [log.read_text(errors="replace") for log in logs]
    taken_by = {
        str(r.id): [
            i
            for i, text in enumerate(texts)
            if str(r.id) in text and f"Aborted submission of flow run '{r.id}'" not in text
        ]
        for r in runs
    }
    assert all(len(w) == 1 for w in taken_by.values()), taken_by  # each run on one worker
    assert len({w[0] for w in taken_by.values()}) == 3, taken_by  # and each worker ran one


async def _wait_for_workers(names: list[str], timeout: float = 90) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            online = {w.name for w in await client.read_workers_for_work_pool("mailpipe")}
            if set(names) <= online:
                return
            assert time.monotonic() < deadline, f"workers {names} not polling; saw {online}"
            await asyncio.sleep(0.5)


# --- Docker and Kubernetes work pools: schema-checked, not run --------------------------------

TEMPLATES = {
    kind: PROJECT / "deployments" / kind / "base-job-template.json"
    for kind in ("docker", "kubernetes")
}


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_work_pool_template_is_accepted_and_renders(
    kind: str, deployed: dict[str, Any], prefect_server: LocalPrefectServer
) -> None:
    import jsonschema
    from prefect.utilities.templating import apply_values

    template = json.loads(TEMPLATES[kind].read_text())
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    for prop in variables["properties"].values():
        if "default" in prop:
            jsonschema.validate(prop["default"], prop)
    # The job variables prefect.yaml gives every deployment, as registered.
    job_variables = deployed["deployments"]["process_email_queue"].job_variables
    jsonschema.validate(job_variables, variables)

    # Raises unless the server accepts the deployment and a run with these job variables.
    run_async(_deploy_on_pool(f"mailpipe-{kind}", kind, template, job_variables))

    defaults = {name: prop.get("default") for name, prop in variables["properties"].items()}
    rendered = apply_values(
        template["job_configuration"],
        {
            **defaults,
            **job_variables,
            "name": "mailpipe-run",
            "labels": {"app": "mailpipe"},
            "command": "python -m prefect.engine",
        },
    )
    assert rendered["env"] == job_variables["env"]
    if kind == "kubernetes":
        job = rendered["job_manifest"]
        assert (job["apiVersion"], job["kind"], job["spec"]["backoffLimit"]) == (
            "batch/v1",
            "Job",
            0,
        )
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == defaults["image"] and container["env"] == job_variables["env"]
        assert container["envFrom"] == [{"secretRef": {"name": "mailpipe", "optional": True}}]
        assert job["metadata"] == {
            "labels": {"app": "mailpipe"},
            "namespace": "mailpipe",
            "generateName": "mailpipe-run-",
        }
    else:
        assert rendered["image"] == defaults["image"] and rendered["auto_remove"] is True
    assert "{{" not in json.dumps(rendered)


async def _deploy_on_pool(
    pool: str, kind: str, template: dict[str, Any], job_variables: dict[str, Any]
) -> None:
    """Create the pool, a deployment on it and a run (each validated by the server), then
    remove them again. Bad job variables must be refused, or the check would prove nothing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError

    async with get_client() as client:
        queue = await client.read_deployment_by_name("process_email_queue/process_email_queue")
        await client.create_work_pool(
            WorkPoolCreate(name=pool, type=kind, base_job_template=template)
        )
        try:
            with pytest.raises(PrefectHTTPStatusError, match="422"):
                await client.create_deployment(
                    flow_id=queue.flow_id,
                    name=f"{kind}-bad",
                    work_pool_name=pool,
                    entrypoint=queue.entrypoint,
                    job_variables={"env": {"N": 1}},
                )
            deployment_id = await client.create_deployment(
                flow_id=queue.flow_id,
                name=f"{kind}-check",
                work_pool_name=pool,
                entrypoint=queue.entrypoint,
                pull_steps=queue.pull_steps,
                job_variables=job_variables,
            )
            run = await client.create_flow_run_from_deployment(deployment_id)
            await client.delete_flow_run(run.id)
            await client.delete_deployment(deployment_id)
        finally:
            await client.delete_work_pool(pool)


# --- mailpipe serve ----------------------------------------------------------------------------


@pytest.fixture
def schedules_quieted_after(deployed: dict[str, Any]) -> Iterator[None]:
    """For tests that switch the schedules on (serve, up): off again afterwards, pass or
    fail, so that the other tests' runs are their own."""
    yield
    run_async(quiet_schedules())


@pytest.mark.usefixtures("schedules_quieted_after")
def test_serve_schedules_runs_and_leaves_schedules_active(
    deployed: dict[str, Any],
    prefect_server: LocalPrefectServer,
    db: Database,
    database_url: str,
    ready_queue: Callable[..., Any],
    smtpd: SMTPTestServer,
    tmp_path: Path,
) -> None:
    out_path = tmp_path / "serve.log"
    receiver_port = free_port()  # the feedback receiver `serve` starts, on a port of its own
    env = child_env(
        prefect_server,
        DATABASE_URL=database_url,
        MAILPIPE_TIMEZONE=TIMEZONE,
        MAILPIPE_FEEDBACK_PORT=str(receiver_port),
    )
    started = time.monotonic()
    with out_path.open("wb") as out:
        serve = subprocess.Popen(
            # No deliverer: it would send the test's events before process_email_queue runs.
            [sys.executable, "-m", "mailpipe", "serve", "--no-deliverer"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_text(out_path, r"being served", serve)
        ready_seconds = time.monotonic() - started
        deployments = run_async(read_deployments())
        assert set(deployments) == set(CRONS)
        for name, cron in CRONS.items():
            d = deployments[name]
            assert not d.paused
            assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules] == [
                (cron, TIMEZONE, True)
            ]
        run_async(wait_for_scheduled_runs(deployments))  # the schedules produce runs
        # No Prefect worker runs now: only the serve process can pick the run up.
        assert_check_worker_answers(out_path, serve, db, ready_queue, smtpd, 20)
        assert_receiver_answers(out_path, serve, receiver_port)
    finally:
        serve.send_signal(signal.SIGTERM)
        rc = serve.wait(60)
    print(f"mailpipe serve: serving after {ready_seconds:.1f} s")
    assert rc == 0, out_path.read_text()[-3000:]
    after = run_async(read_deployments())
    assert all(not d.paused and all(s.active for s in d.schedules) for d in after.values())
    remaining = run_async(scheduled_runs([d.id for d in after.values()]))
    assert {r.deployment_id for r in remaining} == {d.id for d in after.values()}


# --- mailpipe up -------------------------------------------------------------------------------


@pytest.mark.usefixtures("schedules_quieted_after")
def test_up_sets_up_deploys_runs_workers_and_stops_cleanly_on_ctrl_c(
    deployed: dict[str, Any],
    prefect_server: LocalPrefectServer,
    db: Database,
    database_url: str,
    ready_queue: Callable[..., Any],
    smtpd: SMTPTestServer,
    tmp_path: Path,
) -> None:
    # With PREFECT_API_URL set, `up` uses that server (the module's) instead of starting one;
    # the server start and stop it would do are LocalPrefectServer, which the fixture exercises.
    out_path = tmp_path / "up.log"
    receiver_port = free_port()  # the feedback receiver `up` starts, on a port of its own
    env = child_env(
        prefect_server,
        DATABASE_URL=database_url,
        MAILPIPE_TIMEZONE=TIMEZONE,
        MAILPIPE_FEEDBACK_PORT=str(receiver_port),
    )
    env.pop("MAILPIPE_PROJECT_DIR")
    started = time.monotonic()
    with out_path.open("wb") as out:
        up = subprocess.Popen(
            # No deliverer: it would send the test's events before process_email_queue runs.
            [sys.executable, "-m", "mailpipe", "up", "--workers", "1", "--no-deliverer"],
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        text = wait_for_text(out_path, r"Prefect UI: http://", up, timeout=150)
        ready_seconds = time.monotonic() - started
        assert prefect_server.api_url.removesuffix("/api") in text
        deployments = run_async(read_deployments())
        assert {d.work_pool_name for d in deployments.values()} == {"mailpipe"}
        assert_check_worker_answers(out_path, up, db, ready_queue, smtpd, 15)
        assert f"Feedback receiver: http://127.0.0.1:{receiver_port}/feedback/" in text
        assert_receiver_answers(out_path, up, receiver_port)
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        rc = up.wait(60)
    print(f"mailpipe up: ready after {ready_seconds:.1f} s")
    text = out_path.read_text()
    assert rc == 0, text[-3000:]
    assert "Stopped" in text and SMTP_PASSWORD not in text
    with pytest.raises(ProcessLookupError):
        os.killpg(up.pid, 0)  # no worker left behind


def assert_receiver_answers(out_path: Path, up: subprocess.Popen[bytes], port: int) -> None:
    """The receiver `up` started listens (its uvicorn says so in up's output) and answers its
    health route: it reaches the database."""
    import httpx

    wait_for_text(out_path, rf"Uvicorn running on http://127\.0\.0\.1:{port}", up, timeout=60)
    response = httpx.get(f"http://127.0.0.1:{port}/feedback/health", timeout=10)
    assert response.status_code == 200, response.text


# --- late runs ---------------------------------------------------------------------------------


def test_skip_if_late_inside_a_flow_run(prefect_server: LocalPrefectServer) -> None:
    from prefect import flow

    @flow
    def guarded(minutes_later: float) -> str | None:
        now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes_later)
        return runtime.skip_if_late(dt.timedelta(minutes=5), now=now)

    assert guarded(0) is None
    reason = guarded(30)
    assert reason is not None and reason.startswith("skipped: started 18")
    assert runtime.skip_if_late(dt.timedelta(0)) is None  # outside a run: never late


# --- runs left behind, and `up` stopped and started again --------------------------------------


def _run(state: str, *, worker: str | None = None, pid: str | None = None, age: float = 1.0):
    from types import SimpleNamespace

    from prefect.client.schemas.objects import StateType

    timestamp = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    return SimpleNamespace(
        state=SimpleNamespace(type=StateType(state), timestamp=timestamp),
        labels={"prefect.worker.name": worker} if worker else {},
        infrastructure_pid=pid,
    )


def test_which_runs_count_as_left_behind() -> None:
    from mailpipe.deploy.recovery import abandoned_because, worker_name

    ours, now = worker_name(1), dt.datetime.now(dt.UTC)

    def judge(run: Any, online: bool = False) -> str | None:
        return abandoned_because(
            run, prefix=worker_name(1)[:-1], foreign_workers_online=online, now=now
        )

    gone = str(free_port() + 4_000_000)  # no such pid
    assert "never started" in judge(_run("PENDING", worker=ours))
    assert "is gone" in judge(_run("RUNNING", worker=ours, pid=gone))
    assert judge(_run("RUNNING", worker=ours, pid=str(os.getpid()))) is None  # alive here
    assert judge(_run("RUNNING", worker="mailpipe-elsewhere-1", pid=gone)) is None  # not ours
    assert judge(_run("RUNNING")) is None  # no worker took it: someone may run it
    assert "no worker that is still online" in judge(_run("PENDING"))
    assert judge(_run("PENDING"), online=True) is None  # another worker may be submitting it
    assert "PENDING for" in judge(_run("PENDING", age=600), online=True)


async def _leave_pending_as_a_dead_worker_would(deployment: str) -> uuid.UUID:
    """A run that a worker of this machine took (Pending: it holds a concurrency slot) and
    then died before starting it. Scheduled an hour ahead first, so no live worker takes it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Scheduled

    from mailpipe.deploy.recovery import WORKER_LABEL, worker_name

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    async with get_client() as client:
        target = await client.read_deployment_by_name(deployment)
        run = await client.create_flow_run_from_deployment(
            target.id, parameters={"check_quality": False}, state=Scheduled(scheduled_time=later)
        )
        result = await client.set_flow_run_state(run.id, Pending())  # as a worker does
        assert result.state.type.value == "PENDING", result
        await client.update_flow_run_labels(run.id, {WORKER_LABEL: worker_name(1)})
    return run.id


async def _wait_for_state(run_id: uuid.UUID, states: set[str], timeout: float = 120) -> Any:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(run_id)
            if run.state and run.state.type.value in states:
                return run
            assert time.monotonic() < deadline, f"{run.name} still {run.state} after {timeout} s"
            await asyncio.sleep(0.05)


def test_up_port_and_restart_after_ctrl_c_mid_submission(database_url: str, tmp_path: Path) -> None:
    """`up --port P` on its own Prefect server (on Postgres): the UI is told the API is on P.
    Ctrl-C while a run is being submitted stops everything in seconds, and after `up` again the
    next run of that deployment completes. A run a dead worker of this machine left Pending
    holds the deployment's slot (later runs are cancelled) until `up` starts again and crashes
    it; the next run then completes."""
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MAILPIPE_PROJECT_DIR")
    }
    env.update(
        DATABASE_URL=database_url,
        MAILPIPE_DATA_DIR=str(tmp_path / "data"),
        PREFECT_HOME=str(tmp_path / "client-home"),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
    )
    # Daily at midnight: no scheduled run of it gets in the way; its limit is 1, CANCEL_NEW.
    deployment = "snapshot_email_health/snapshot_email_health"

    command = [sys.executable, "-m", "mailpipe", "up"]

    def start_up(n: int) -> tuple[subprocess.Popen[bytes], Path]:
        out_path = tmp_path / f"up-{n}.log"
        with out_path.open("wb") as out:
            process = subprocess.Popen(
                [
                    *command,
                    "--port",
                    str(port),
                    "--prefect-db",
                    "postgres",
                    "--no-quality-worker",
                    "--no-feedback-receiver",
                ],
                cwd=PROJECT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_text(out_path, r"Prefect UI: http://", process, timeout=240)
        return process, out_path

    def ctrl_c(process: subprocess.Popen[bytes], out_path: Path) -> float:
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rc = process.wait(60)
        seconds = time.monotonic() - started
        text = out_path.read_text(errors="replace")
        assert rc == 0 and "Stopped" in text and "Traceback" not in text, text[-3000:]
        return seconds

    def run_to_the_end() -> Any:
        run_id = run_async(start_run(deployment, check_quality=False))
        return run_async(_wait_for_state(run_id, TERMINAL))

    up, out_path = start_up(1)
    try:
        text = out_path.read_text()
        assert f"Prefect UI: http://127.0.0.1:{port}" in text and "database: postgres" in text
        ui = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        assert ui["api_url"] == api_url  # the UI calls this server, not port 4200
        with temporary_settings({PREFECT_API_URL: api_url}):
            first = run_async(start_run(deployment, check_quality=False))
            run_async(_wait_for_state(first, {"PENDING"}, timeout=60))  # mid-submission
            stop_seconds = ctrl_c(up, out_path)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    print(f"up stopped {stop_seconds:.1f} s after Ctrl-C with a run mid-submission")
    assert stop_seconds < 30

    up, out_path = start_up(2)
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            # The server restarted: the first run ended (or was crashed as left behind) ...
            left = run_async(_wait_for_state(first, TERMINAL, timeout=60))
            # ... and the next run of the deployment gets its slot.
            second = run_to_the_end()
            assert second.state.type.value == "COMPLETED", (left.state, second.state)
            # Now a worker of this machine dies mid-submission: its run keeps the slot ...
            third = run_async(_leave_pending_as_a_dead_worker_would(deployment))
            refused = run_to_the_end()
            assert refused.state.type.value == "CANCELLED", refused.state
            assert "concurrency limit" in refused.state.message
            stuck = run_async(_wait_for_state(third, {"PENDING"}, timeout=5))
            stop_seconds = ctrl_c(up, out_path)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    assert stop_seconds < 30

    up, out_path = start_up(3)
    try:
        # ... until `up` starts again and crashes it, releasing the slot.
        assert f"Crashed run {stuck.name} of {deployment}" in out_path.read_text()
        with temporary_settings({PREFECT_API_URL: api_url}):
            crashed = run_async(_wait_for_state(third, {"CRASHED"}, timeout=5))
            assert "left behind" in crashed.state.message
            fourth = run_to_the_end()
            assert fourth.state.type.value == "COMPLETED", fourth.state
    finally:
        if up.poll() is None:
            ctrl_c(up, out_path)
    with pytest.raises(ProcessLookupError):
        os.killpg(up.pid, 0)  # no child left behind


# --- the sweeper hosted by serve's deliverer ----------------------------------------------------


@pytest.mark.usefixtures("schedules_quieted_after")
def test_serves_deliverer_executes_the_sweepers_scheduled_runs(
    deployed: dict[str, Any],
    prefect_server: LocalPrefectServer,
    database_url: str,
    tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from mailpipe.deploy.recovery import WORKER_LABEL
    from mailpipe.deploy.sweeper import sweeper_label

    async def schedule(in_seconds: float) -> uuid.UUID:
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=in_seconds)
        async with get_client() as client:
            target = await client.read_deployment_by_name("process_email_queue/process_email_queue")
            run = await client.create_flow_run_from_deployment(
                target.id, state=Scheduled(scheduled_time=when)
            )
        return run.id

    out_path = tmp_path / "serve.log"
    env = child_env(prefect_server, DATABASE_URL=database_url, MAILPIPE_TIMEZONE=TIMEZONE)
    with out_path.open("wb") as out:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailpipe",
                "serve",
                "--only",
                "process_email_queue",
                "--no-quality-worker",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_text(out_path, r"being served", serve)
        wait_for_text(out_path, r"mailpipe deliver: ready", serve)
        # Scheduled ahead, as the schedule's runs are: the deliverer (30 s ahead) takes it
        # before serve's runner (10 s ahead) would.
        (run,) = run_async(wait_for_runs([run_async(schedule(25))], timeout=120))
    finally:
        serve.send_signal(signal.SIGTERM)
        rc = serve.wait(60)
    assert rc == 0, out_path.read_text()[-3000:]
    assert run.state.is_completed(), run.state
    assert run.labels.get(WORKER_LABEL) == sweeper_label()
