"""The local Prefect server ``mailpipe run`` keeps: started on demand, reused, stopped by hand.

It works like the embedded Postgres: when no Prefect API is configured, the first command that
runs a flow starts it, detached from that command; the next commands reuse it; ``mailpipe server
stop`` stops it. Its state is ``<data dir>/prefect/local/``: the Prefect home (SQLite database),
``server.json`` (pid, port, Prefect version), ``server.log``, and a lock file so that two
commands starting at once start one server. It runs what Prefect's own temporary server runs
(the API and the services runs need, no UI, no scheduler), so it answers in seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mailpipe.config import Settings
from mailpipe.deploy import OrchestrationError
from mailpipe.deploy.api import STARTUP_TIMEOUT_SECONDS, is_healthy, wait_until_healthy
from mailpipe.deploy.processes import pid_is_alive
from mailpipe.deploy.server import prefect_home, server_environment


@dataclass(frozen=True)
class KeptServer:
    """What ``server.json`` records about the kept server."""

    pid: int
    port: int
    prefect_version: str
    started_at: float

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def _state_file(home: Path) -> Path:
    return home / "server.json"


def read_kept_server(home: Path) -> KeptServer | None:
    """The kept server ``server.json`` records, or None (also when the file is unreadable)."""
    try:
        return KeptServer(**json.loads(_state_file(home).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def running_kept_server(home: Path) -> KeptServer | None:
    """The kept server ``server.json`` records when its process is alive, else None."""
    server = read_kept_server(home)
    if server is None or not pid_is_alive(server.pid):
        return None
    return server


@contextlib.contextmanager
def _start_lock(home: Path) -> Iterator[None]:
    # Two commands starting at once must start one server: the second waits, then reuses it.
    home.mkdir(parents=True, exist_ok=True)
    with (home / "server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# Kept referenced, never waited for: the server outlives this process (a Popen collected while
# its child runs would warn).
_DETACHED: list[subprocess.Popen[bytes]] = []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn_kept_server(home: Path, env: Mapping[str, str]) -> KeptServer:
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    environment = server_environment(env, home=home, api_url=api_url)
    # What Prefect's own temporary server runs: the API and the services runs need (task run
    # and event recording), no UI and no scheduler, so it answers in seconds.
    environment.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1")
    command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error"]
    with (home / "server.log").open("ab") as log:
        process = subprocess.Popen(
            [*command, "--lifespan", "on"],
            env=environment,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command, and its Ctrl-C
        )
    _DETACHED.append(process)  # never reaped here: it outlives this process
    server = KeptServer(process.pid, port, metadata.version("prefect"), time.time())
    _state_file(home).write_text(json.dumps(asdict(server)), encoding="utf-8")
    return server


class StartingServer:
    """The kept server being started: call it to wait until it answers (the start lock is
    held until then, so a second command waits for this server instead of starting one)."""

    def __init__(
        self, home: Path, server: KeptServer, lock: contextlib.AbstractContextManager[None]
    ):
        self.home, self.server, self._lock = home, server, lock
        self.spawned = False  # whether this command started it

    def __call__(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> KeptServer:
        try:
            alive = lambda: pid_is_alive(self.server.pid)  # noqa: E731
            wait_until_healthy(self.server.api_url, timeout=timeout, alive=alive)
        except OrchestrationError as exc:
            raise OrchestrationError(f"{exc}; its log is {self.home / 'server.log'}") from None
        finally:
            self._lock.__exit__(None, None, None)
        return self.server

    def abandon(self) -> None:
        """Not needed after all: stop it (if this call started it) and release the lock."""
        try:
            if self.spawned:
                stop_kept_server(self.home)
        finally:
            self._lock.__exit__(None, None, None)


def start_kept_server(home: Path, *, env: Mapping[str, str] | None = None) -> StartingServer:
    """Start the kept server unless it runs; returns a :class:`StartingServer` to wait on.

    Split in two so a caller can import its flows while the server boots. A server of another
    Prefect version (an upgrade) is replaced; one that is starting is waited for.
    """
    env = dict(env if env is not None else os.environ)
    lock = _start_lock(home)
    lock.__enter__()
    try:
        server = running_kept_server(home)
        if server is not None and server.prefect_version != metadata.version("prefect"):
            stop_kept_server(home)
            server = None
        spawned = server is None
        if server is None:
            server = _spawn_kept_server(home, env)
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    starting = StartingServer(home, server, lock)
    starting.spawned = spawned
    return starting


def ensure_kept_server(home: Path, *, timeout: float = STARTUP_TIMEOUT_SECONDS) -> KeptServer:
    """The kept server, started when it does not run, once it answers."""
    server = running_kept_server(home)
    if server is not None and is_healthy(server.api_url):
        return server
    return start_kept_server(home)(timeout)


def stop_kept_server(home: Path, *, timeout: float = 15.0) -> KeptServer | None:
    """Stop the kept server (SIGTERM, SIGKILL after ``timeout``); the one stopped, or None."""
    server = running_kept_server(home)
    _state_file(home).unlink(missing_ok=True)
    if server is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)  # its own group: uvicorn and anything it started
    deadline = time.monotonic() + timeout
    while pid_is_alive(server.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    return server


def kept_server_status(home: Path) -> dict[str, Any]:
    """What ``mailpipe server status`` prints."""
    server = running_kept_server(home)
    if server is None:
        return {"running": False, "home": str(home)}
    return {
        "running": True,
        "healthy": is_healthy(server.api_url),
        "api_url": server.api_url,
        "pid": server.pid,
        "prefect_version": server.prefect_version,
        "home": str(home),
        "log": str(home / "server.log"),
    }


def kept_prefect_api(settings: Settings | None = None) -> Callable[[], str] | None:
    """For commands that run flows in-process (``mailpipe run``): None when a Prefect API is
    configured (``PREFECT_API_URL`` or the active profile), else the kept server, started now
    when it does not run; returns a function that waits until it answers and gives its URL.

    Call it first and the function last: the server boots while the caller imports its flows.
    When the kept server does not run, it is started before Prefect's settings are even read
    (a second of imports); should they name an API after all, it is stopped again at once.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None  # known without importing Prefect's settings
    from mailpipe.deploy.api import configured_api_url

    home = prefect_home(settings, name="local")
    server = running_kept_server(home)
    if server is not None and server.prefect_version == metadata.version("prefect"):
        if configured_api_url():
            return None
        if is_healthy(server.api_url):
            return lambda: server.api_url
    wait = start_kept_server(home)
    if configured_api_url():
        wait.abandon()
        return None
    return lambda: wait(STARTUP_TIMEOUT_SECONDS).api_url
