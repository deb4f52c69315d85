"""A local Prefect server as a child process (``mailpipe up``), and what every server
mailpipe starts shares.

Every server mailpipe starts (this one, and the kept one of :mod:`mailpipe.deploy.kept`) has
telemetry off, its own ``PREFECT_HOME`` under ``MAILPIPE_DATA_DIR`` (never the user's
``~/.prefect``), its output in a log file (a terminal never sees a server traceback), and
concurrency leases on disk: Prefect keeps them in memory by default, so a restart would forget
who holds a deployment's slot and the slot would stay taken for good; on disk, an expired
lease is reclaimed after a restart too.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from mailpipe.config import Settings, get_settings
from mailpipe.deploy import OrchestrationError
from mailpipe.deploy.api import STARTUP_TIMEOUT_SECONDS, wait_until_healthy
from mailpipe.deploy.processes import (
    port_is_free,
    prefect_executable,
    stop_process,
)

# Prefect keeps concurrency leases in memory unless told otherwise (see the module docstring).
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def prefect_home(settings: Settings | None = None, *, name: str) -> Path:
    """``<MAILPIPE_DATA_DIR>/prefect/<name>``: a server's Prefect home (``local`` or ``up``)."""
    settings = settings or get_settings()
    return (settings.data_dir / "prefect" / name).expanduser().resolve()


def server_environment(
    env: Mapping[str, str], *, home: Path | None, api_url: str, database_url: str | None = None
) -> dict[str, str]:
    """The environment of a server process mailpipe starts.

    ``api_url`` is what the UI's settings endpoint (``/ui-settings``) gives browsers: without
    it Prefect names port 4200 whatever port the server listens on, and the UI would show
    another server's data, or none.
    """
    environment = {
        **env,
        **QUIET,
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
        "PREFECT_UI_API_URL": api_url,
    }
    environment.pop("PREFECT_API_URL", None)  # a client setting; the server is not a client
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        environment["PREFECT_HOME"] = str(home)
    if database_url:
        environment["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    return environment


class LocalPrefectServer:
    """``prefect server start`` as a child process, with a health wait and a clean stop.

    ``home`` is its Prefect home (default: the environment's); ``database_url`` its database
    (``postgresql+asyncpg://...``; default: SQLite in the home).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 4200,
        ui: bool = True,
        env: Mapping[str, str] | None = None,
        log: IO[bytes] | int | None = None,
        home: Path | None = None,
        database_url: str | None = None,
    ) -> None:
        self.host, self.port, self.ui = host, port, ui
        self.env = dict(env if env is not None else os.environ)
        self.log = log
        self.home = home
        self.database_url = database_url
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> LocalPrefectServer:
        """Start the server and wait until it answers (10-20 s on a small machine)."""
        if not port_is_free(self.host, self.port):
            raise OrchestrationError(
                f"port {self.port} is taken (another Prefect server?): pass --port, or set "
                f"PREFECT_API_URL=http://{self.host}:{self.port}/api to use that server"
            )
        command = [prefect_executable(), "server", "start"]
        command += ["--host", self.host, "--port", str(self.port)]
        if not self.ui:
            command.append("--no-ui")
        env = server_environment(
            self.env, home=self.home, api_url=self.api_url, database_url=self.database_url
        )
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the parent decides when it stops (see processes.py)
        )
        try:
            self.startup_seconds = wait_until_healthy(
                self.api_url, timeout=timeout, alive=lambda: self.process.poll() is None
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, timeout: float = 20.0) -> None:
        """Stop the server (a no-op when it is not running)."""
        if self.process is not None:
            stop_process(self.process, timeout=timeout)

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
