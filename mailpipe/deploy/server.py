"""A local Prefect server: in the foreground for ``mailpipe up``, or kept for ``mailpipe run``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from typing import IO

from mailpipe.deploy import OrchestrationError
from mailpipe.deploy.api import STARTUP_TIMEOUT_SECONDS, wait_until_healthy
from mailpipe.deploy.processes import port_is_free, prefect_executable, stop_process


class LocalPrefectServer:
    """``prefect server start`` as a child process, with a health wait and a clean stop.

    Its database is Prefect's default (SQLite under ``PREFECT_HOME``); for production point
    ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` at a real Postgres with ``pg_trgm`` instead.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 4200,
        ui: bool = True,
        env: Mapping[str, str] | None = None,
        log: IO[bytes] | int | None = None,
    ) -> None:
        self.host, self.port, self.ui = host, port, ui
        self.env = dict(env if env is not None else os.environ)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> LocalPrefectServer:
        """Start the server and wait until it answers (about 20 s on a small machine)."""
        if not port_is_free(self.host, self.port):
            raise OrchestrationError(
                f"port {self.port} is taken (another Prefect server?): pass --port, or set "
                f"PREFECT_API_URL=http://{self.host}:{self.port}/api to use that server"
            )
        command = [
            prefect_executable(),
            "server",
            "start",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if not self.ui:
            command.append("--no-ui")
        env = {**self.env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            self.startup_seconds = wait_until_healthy(
                self.api_url, timeout=timeout, alive=lambda: self.process.poll() is None
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, grace: float = 0.0) -> None:
        """Stop the server (a no-op when it is not running)."""
        if self.process is not None:
            stop_process(self.process, grace=grace)

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
