"""The child processes mailpipe starts: ``prefect`` commands, workers, the check worker, the
feedback receiver and the deliverer.

Each child gets its own process group (``start_new_session``): a Ctrl-C at the terminal then
reaches only the parent (``up``, ``serve``), which signals every child once, at the same time,
instead of each child seeing the terminal's signal and the parent's too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from mailpipe.deploy import OrchestrationError


def prefect_executable() -> str:
    """The ``prefect`` command of this environment."""
    local = Path(sys.executable).with_name("prefect")
    if local.exists():
        return str(local)
    found = shutil.which("prefect")
    if not found:
        raise OrchestrationError("the prefect command is not installed here; run `uv sync`")
    return found


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0


def feedback_receiver_address() -> str:
    """``host:port`` the feedback receiver will listen on (``MAILPIPE_FEEDBACK_HOST``/``_PORT``),
    refused before anything starts when something already listens there."""
    from mailpipe.errors import ConfigError
    from mailpipe.feedback.settings import get_feedback_settings

    feedback = get_feedback_settings()
    if not port_is_free(feedback.host, feedback.port):
        raise ConfigError(
            f"the feedback receiver's port {feedback.host}:{feedback.port} is in use: set "
            "MAILPIPE_FEEDBACK_PORT to a free port, or pass --no-feedback-receiver"
        )
    return f"{feedback.host}:{feedback.port}"


def pid_is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie child of this process is reaped, not alive)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds the pid
    return True


def _signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    # A child started with start_new_session leads its own group: signal it and everything
    # it started (a worker's flow-run processes); else only the child itself.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)


def stop_processes(
    processes: Iterable[subprocess.Popen[Any]], *, timeout: float = 20.0
) -> list[int | None]:
    """SIGTERM to every process at once, one shared deadline, then SIGKILL what is left.

    SIGTERM is the graceful stop of Prefect servers, workers (they stop polling and end their
    flow-run processes, which report Crashed and give their slots back) and of the check
    worker. Returns the exit codes.
    """
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(deadline - time.monotonic(), 0.01))
        if process.poll() is None:
            _signal_group(process, signal.SIGKILL)
            process.wait(5)
    return [p.returncode for p in processes]


def stop_process(process: subprocess.Popen[Any], *, timeout: float = 20.0) -> int | None:
    """:func:`stop_processes` for one process."""
    return stop_processes([process], timeout=timeout)[0]


def deploy_all(*, api_url: str, project: Path, env: Mapping[str, str] | None = None) -> str:
    """``prefect --no-prompt deploy --all`` in the project; returns its output."""
    environment = {**(env if env is not None else os.environ), "PREFECT_API_URL": api_url}
    result = subprocess.run(
        [prefect_executable(), "--no-prompt", "deploy", "--all"],
        cwd=project,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise OrchestrationError(f"prefect deploy --all failed:\n{tail}")
    return result.stdout


def start_worker(
    *,
    api_url: str,
    pool: str,
    name: str,
    project: Path,
    env: Mapping[str, str] | None = None,
    limit: int | None = None,
    run_once: bool = False,
    output: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """``prefect worker start --pool POOL`` as a child process, run from the project."""
    command = [prefect_executable(), "worker", "start", "--pool", pool, "--name", name]
    if limit is not None:
        command += ["--limit", str(limit)]
    if run_once:
        command.append("--run-once")
    environment = {
        **(env if env is not None else os.environ),
        "PREFECT_API_URL": api_url,
        "MAILPIPE_PROJECT_DIR": str(project),
    }
    return subprocess.Popen(
        command,
        cwd=project,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        start_new_session=True,  # stopped by its parent only (see the module docstring)
    )


def start_quality_worker(
    *, project: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``mailpipe check worker`` as a child process: answers the flows' post-run data-quality
    checks with Great Expectations imported once (see :mod:`mailpipe.quality_worker`)."""
    environment = {**(env if env is not None else os.environ), "MAILPIPE_PROJECT_DIR": str(project)}
    return subprocess.Popen(
        [sys.executable, "-m", "mailpipe", "check", "worker"],
        cwd=project,
        env=environment,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_feedback_receiver(
    *, project: Path, env: Mapping[str, str] | None = None, output: IO[bytes] | int | None = None
) -> subprocess.Popen[bytes]:
    """``mailpipe feedback serve`` as a child process: the providers' webhook receiver on
    ``MAILPIPE_FEEDBACK_HOST``:``MAILPIPE_FEEDBACK_PORT`` (docs/feedback.md); it stores events
    in the inbox, the process_email_feedback deployment applies them."""
    environment = {**(env if env is not None else os.environ), "MAILPIPE_PROJECT_DIR": str(project)}
    return subprocess.Popen(
        [sys.executable, "-m", "mailpipe", "feedback", "serve"],
        cwd=project,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        start_new_session=True,
    )


def start_deliverer(
    *, project: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``mailpipe deliver`` as a child process: sends events the moment they are due (see
    :mod:`mailpipe.delivery.deliverer`); ``process_email_queue`` stays as the sweeper."""
    environment = {**(env if env is not None else os.environ), "MAILPIPE_PROJECT_DIR": str(project)}
    return subprocess.Popen(
        [sys.executable, "-m", "mailpipe", "deliver"],
        cwd=project,
        env=environment,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # stopped by its parent only (see the module docstring)
    )
