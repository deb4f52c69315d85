"""``mailpipe up``: the whole system on one machine until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailpipe.config import Settings, get_settings
from mailpipe.deploy import OrchestrationError
from mailpipe.deploy.api import configured_api_url
from mailpipe.deploy.processes import (
    deploy_all,
    start_quality_worker,
    start_worker,
    stop_process,
)
from mailpipe.deploy.project import (
    PROJECT_FILE,
    load_deployment_specs,
    project_dir,
    project_file,
    work_pool_names,
)
from mailpipe.deploy.server import LocalPrefectServer
from mailpipe.deploy.setup import SecretSource, SetupStep, env_secret_source, setup_prefect
from mailpipe.errors import ConfigError


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


def up(
    *,
    host: str = "127.0.0.1",
    port: int = 4200,
    workers: int = 1,
    quality_worker: bool = True,
    on_ready: Callable[[UpReport], None] | None = None,
    secret_source: SecretSource = env_secret_source,
    settings: Settings | None = None,
) -> UpReport:
    """The whole system on one machine, until Ctrl-C (or SIGTERM); then everything stops.

    Starts a local Prefect server (unless ``PREFECT_API_URL`` or the active profile names one),
    migrates the database, runs :func:`setup_prefect`, deploys ``prefect.yaml``, starts
    ``workers`` worker processes on the work pool and (``quality_worker``) a ``mailpipe check
    worker``, calls ``on_ready`` and waits.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = settings or get_settings()
    project = project_dir(settings)
    specs = load_deployment_specs(project_file(project))
    pools = work_pool_names(specs)
    if not pools:
        raise ConfigError(f"no work pool in {PROJECT_FILE}: nothing for workers to poll")
    # Deployed runs execute in the project folder: so does `up`, so that a relative
    # MAILPIPE_DATA_DIR (the embedded Postgres) is the same folder for both.
    os.chdir(project)

    server: LocalPrefectServer | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}  # what each one is -> the process
    server_log_path: Path | None = None
    report: UpReport | None = None
    received: list[int] = []

    def stop_on(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    # Installed explicitly: a shell that starts `up` in the background ignores SIGINT.
    previous = {sig: signal.signal(sig, stop_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        api_url = configured_api_url()
        ui_url = api_url.removesuffix("/api") if api_url else ""
        if not api_url:
            logs = settings.data_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            server_log_path = logs / "prefect-server.log"
            with server_log_path.open("ab") as log:
                server = LocalPrefectServer(host=host, port=port, log=log).start()
            api_url, ui_url = server.api_url, server.ui_url
        env = {**os.environ, "PREFECT_API_URL": api_url}
        with temporary_settings({PREFECT_API_URL: api_url}):
            applied = asyncio.run(_migrate(settings))
            steps = asyncio.run(
                setup_prefect(settings=settings, secret_source=secret_source, project=project)
            )
        deploy_all(api_url=api_url, project=project, env=env)
        host_name = socket.gethostname()
        for i in range(workers):
            name = f"mailpipe-{host_name}-{i + 1}"
            children[f"worker {name}"] = start_worker(
                api_url=api_url, pool=pools[0], project=project, name=name, env=env
            )
        if quality_worker:
            children["mailpipe check worker"] = start_quality_worker(project=project, env=env)
        report = UpReport(
            api_url=api_url,
            ui_url=ui_url,
            started_server=server is not None,
            server_seconds=server.startup_seconds if server else None,
            setup=steps,
            migrations=applied,
            deployments=[s.full_name for s in specs],
            workers=workers,
            server_log=server_log_path,
            quality_worker=quality_worker,
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
    except KeyboardInterrupt:
        if report is None:
            raise  # interrupted while starting
        return report  # Ctrl-C is how `up` is meant to end
    finally:
        # After a Ctrl-C the whole process group got SIGINT: let the children finish first.
        grace = 15.0 if signal.SIGINT in received else 0.0
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan them
        for child in children.values():
            stop_process(child, grace=grace)
        if server is not None:
            server.stop(grace=grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _migrate(settings: Settings) -> list[str]:
    from mailpipe.db import Database
    from mailpipe.migrations import migrate

    async with Database(settings=settings, min_size=1, max_size=1) as db:
        return await migrate(db)
