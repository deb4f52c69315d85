"""``mailpipe up``: the whole system on one machine until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailpipe.config import Settings, get_settings
from mailpipe.deploy import OrchestrationError
from mailpipe.deploy.api import configured_api_url
from mailpipe.deploy.database import PrefectDatabase, prefect_database_url
from mailpipe.deploy.processes import (
    deploy_all,
    feedback_receiver_address,
    start_deliverer,
    start_feedback_receiver,
    start_quality_worker,
    start_worker,
    stop_processes,
)
from mailpipe.deploy.project import (
    PROJECT_FILE,
    load_deployment_specs,
    project_dir,
    project_file,
    work_pool_names,
)
from mailpipe.deploy.recovery import (
    CrashedRun,
    crash_abandoned_runs,
    wait_for_submissions,
    worker_name,
)
from mailpipe.deploy.server import LocalPrefectServer, prefect_home
from mailpipe.deploy.setup import SecretSource, SetupStep, env_secret_source, setup_prefect
from mailpipe.errors import ConfigError

SUBMISSION_WAIT_SECONDS = 10.0  # a worker's submission takes a second or two
CHILD_STOP_SECONDS = 20.0  # SIGKILL after this: a worker ends its flow processes in seconds


@dataclass
class UpReport:
    """What ``up`` started, for printing."""

    api_url: str
    ui_url: str
    started_server: bool
    server_seconds: float | None
    setup: list[SetupStep]
    migrations: list[str]
    deployments: list[str]
    workers: int
    server_log: Path | None
    quality_worker: bool = True
    deliverer: bool = True
    server_database: str = "sqlite"  # postgres or sqlite: where up's server keeps its data
    crashed: list[CrashedRun] = field(default_factory=list)
    feedback_receiver: str | None = None  # where `mailpipe feedback serve` listens, if started


class _Stop(Exception):
    """SIGINT or SIGTERM arrived: stop everything (``up`` is meant to end this way)."""


def up(
    *,
    host: str = "127.0.0.1",
    port: int = 4200,
    workers: int = 1,
    quality_worker: bool = True,
    feedback_receiver: bool = True,
    deliverer: bool = True,
    prefect_db: PrefectDatabase = PrefectDatabase.AUTO,
    on_ready: Callable[[UpReport], None] | None = None,
    secret_source: SecretSource = env_secret_source,
    settings: Settings | None = None,
) -> UpReport:
    """The whole system on one machine, until Ctrl-C (or SIGTERM); then everything stops.

    Starts a local Prefect server on ``host:port`` (unless ``PREFECT_API_URL`` or the active
    profile names one; its UI then names that port, its data lives on Postgres per
    ``prefect_db``), migrates the database, runs :func:`setup_prefect`, deploys
    ``prefect.yaml``, crashes the runs a dead worker of this machine left behind (see
    :mod:`mailpipe.deploy.recovery`), starts ``workers`` worker processes on the work pool and
    (``quality_worker``) a ``mailpipe check worker``, (``feedback_receiver``) the providers'
    webhook receiver ``mailpipe feedback serve`` and (``deliverer``) a ``mailpipe deliver``,
    calls ``on_ready`` and waits.

    Stopping: every child is in its own process group, so a terminal's Ctrl-C reaches ``up``
    alone. ``up`` waits (a few seconds at most) until no run of its deployments is mid-submission,
    then sends SIGTERM to every worker and the check worker at once, and stops the server last,
    so the workers can still report how their runs ended.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = settings or get_settings()
    project = project_dir(settings)
    specs = load_deployment_specs(project_file(project))
    pools = work_pool_names(specs)
    if not pools:
        raise ConfigError(f"no work pool in {PROJECT_FILE}: nothing for workers to poll")
    names = [s.full_name for s in specs]
    receiver_at = feedback_receiver_address() if feedback_receiver else None
    # Deployed runs execute in the project folder: so does `up`, so that a relative
    # MAILPIPE_DATA_DIR (the embedded Postgres) is the same folder for both.
    os.chdir(project)

    server: LocalPrefectServer | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}  # what each one is -> the process
    server_log_path: Path | None = None
    report: UpReport | None = None
    api_url = ""

    def stop_on(signum: int, frame: object) -> None:
        for sig in previous:  # a second signal must not interrupt the stopping
            signal.signal(sig, signal.SIG_IGN)
        raise _Stop

    # Installed explicitly: a shell that starts `up` in the background ignores SIGINT.
    previous = {sig: signal.signal(sig, stop_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        api_url = configured_api_url() or ""
        ui_url = api_url.removesuffix("/api")
        database = "as configured"
        if not api_url:
            database_url = prefect_database_url(prefect_db, settings)
            database = "postgres" if database_url else "sqlite"
            server_log_path = prefect_home(settings, name="up") / "server.log"
            server_log_path.parent.mkdir(parents=True, exist_ok=True)
            with server_log_path.open("ab") as log:
                server = LocalPrefectServer(
                    host=host,
                    port=port,
                    log=log,
                    home=prefect_home(settings, name="up"),
                    database_url=database_url,
                ).start()
            api_url, ui_url = server.api_url, server.ui_url
        env = {**os.environ, "PREFECT_API_URL": api_url}
        with temporary_settings({PREFECT_API_URL: api_url}):
            applied = asyncio.run(_migrate(settings))
            steps = asyncio.run(
                setup_prefect(settings=settings, secret_source=secret_source, project=project)
            )
            deploy_all(api_url=api_url, project=project, env=env)
            crashed = asyncio.run(crash_abandoned_runs(names, pools=pools))
        for i in range(workers):
            name = worker_name(i + 1)
            children[f"worker {name}"] = start_worker(
                api_url=api_url, pool=pools[0], project=project, name=name, env=env
            )
        if quality_worker:
            children["mailpipe check worker"] = start_quality_worker(project=project, env=env)
        if receiver_at:
            children["mailpipe feedback serve"] = start_feedback_receiver(project=project, env=env)
        if deliverer:
            children["mailpipe deliver"] = start_deliverer(project=project, env=env)
        report = UpReport(
            api_url=api_url,
            ui_url=ui_url,
            started_server=server is not None,
            server_seconds=server.startup_seconds if server else None,
            setup=steps,
            migrations=applied,
            deployments=names,
            workers=workers,
            server_log=server_log_path,
            quality_worker=quality_worker,
            deliverer=deliverer,
            server_database=database,
            crashed=crashed,
            feedback_receiver=receiver_at,
        )
        if on_ready:
            on_ready(report)
        while True:
            for what, child in children.items():
                if child.poll() is not None:
                    raise OrchestrationError(
                        f"{what} exited with status {child.returncode}; see its output above"
                    )
            if server and server.process and server.process.poll() is not None:
                raise OrchestrationError(f"the Prefect server exited; see {server_log_path}")
            time.sleep(0.5)
    except _Stop:
        if report is None:
            raise KeyboardInterrupt from None  # interrupted while starting
        return report  # Ctrl-C is how `up` is meant to end
    finally:
        # A second Ctrl-C or SIGTERM must not cut the stopping short and orphan the children.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if children and api_url:
            with temporary_settings({PREFECT_API_URL: api_url}), contextlib.suppress(Exception):
                # Best effort: with the server gone, nothing is being submitted either.
                asyncio.run(wait_for_submissions(names, timeout=SUBMISSION_WAIT_SECONDS))
        stop_processes(children.values(), timeout=CHILD_STOP_SECONDS)
        if server is not None:
            server.stop(timeout=CHILD_STOP_SECONDS)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _migrate(settings: Settings) -> list[str]:
    from mailpipe.db import Database
    from mailpipe.migrations import migrate

    async with Database(settings=settings, min_size=1, max_size=1) as db:
        return await migrate(db)
