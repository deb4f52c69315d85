"""The feedback receiver as `mailpipe up` and `mailpipe serve` run it: a child process
(`mailpipe feedback serve`) that takes real requests, stops on SIGTERM; both refuse a taken
port before starting, and both can leave it out (--no-feedback-receiver)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mailpipe.deploy.processes import (
    feedback_receiver_address,
    start_feedback_receiver,
    stop_process,
)
from mailpipe.errors import ConfigError
from mailpipe.feedback.settings import get_feedback_settings
from mailpipe.testing.smtpd import free_port
from tests.cli_support import fetch

PROJECT = Path(__file__).resolve().parents[2]
SECRET = "generic-deploy-" + "z" * 16


def wait_for_output(path: Path, pattern: str, process: subprocess.Popen[bytes]) -> None:
    """Until the child's output matches (fails at once if it exits)."""
    deadline = time.monotonic() + 60
    while not re.search(pattern, path.read_text(errors="replace")):
        assert process.poll() is None, path.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, path.read_text(errors="replace")[-2000:]
        time.sleep(0.1)


def test_receiver_child_stores_events_and_stops_on_sigterm(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MAILPIPE_FEEDBACK_PORT": str(port),
        "MAILPIPE_FEEDBACK_GENERIC_SECRET": SECRET,
    }
    log = tmp_path / "receiver.log"
    with log.open("wb") as out:
        child = start_feedback_receiver(project=PROJECT, env=env, output=out)
    try:
        wait_for_output(log, rf"Uvicorn running on http://127\.0\.0\.1:{port}", child)
        base = f"http://127.0.0.1:{port}/feedback"
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        event = {"id": "deploy-1", "kind": "delivered", "message_id": "<m1@shop.example>"}
        response = httpx.post(
            f"{base}/generic", json=event, headers={"Authorization": f"Bearer {SECRET}"}, timeout=10
        )
        assert response.status_code == 200, response.text
        assert httpx.post(f"{base}/generic", json=event, timeout=10).status_code == 401
    finally:
        code = stop_process(child, timeout=20)
    # A graceful stop: uvicorn finishes, then re-raises SIGTERM (exit -15) as it was asked.
    assert code in (0, -signal.SIGTERM), log.read_text()[-2000:]
    assert "Application shutdown complete" in log.read_text() and SECRET not in log.read_text()
    rows = fetch(database_url, "SELECT provider_event_id, state FROM email_feedback_events")
    assert rows == [{"provider_event_id": "deploy-1", "state": "received"}]


def test_up_and_serve_refuse_a_taken_receiver_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailpipe.deploy.serve import serve_project

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("MAILPIPE_FEEDBACK_PORT", str(port))
        get_feedback_settings.cache_clear()  # read once per process: read it again here
        try:
            with pytest.raises(ConfigError, match=f"127.0.0.1:{port} is in use.*--no-feedback"):
                feedback_receiver_address()
            # `mailpipe serve` refuses it before anything starts (no Prefect API is needed to
            # get that far: none is configured here).
            with pytest.raises(ConfigError, match=f"127.0.0.1:{port} is in use.*--no-feedback"):
                serve_project(project=PROJECT)
            taken.close()
            assert feedback_receiver_address() == f"127.0.0.1:{port}"  # free again
        finally:
            monkeypatch.undo()
            get_feedback_settings.cache_clear()


def test_serve_without_the_receiver_does_not_need_its_port() -> None:
    """`mailpipe serve --no-feedback-receiver` gets past a taken receiver port (and stops at
    the next requirement: no Prefect API is configured for it here)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["MAILPIPE_FEEDBACK_PORT"] = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "mailpipe", "serve", "--no-feedback-receiver"],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no Prefect API configured" in result.stderr and "is in use" not in result.stderr


def test_deployment_examples_run_the_receiver_with_its_health_probe() -> None:
    """The unit, the compose file and the manifest start the command tested above and probe
    the route the receiver serves (documentation, but kept true)."""
    import yaml

    folder = PROJECT / "deployments"
    unit = (folder / "process" / "mailpipe-feedback.service").read_text()
    assert "ExecStart=/srv/mailpipe/.venv/bin/mailpipe feedback serve\n" in unit
    compose = yaml.safe_load((folder / "docker" / "feedback-receiver.compose.yaml").read_text())
    service = compose["services"]["mailpipe-feedback"]
    assert service["command"] == ["mailpipe", "feedback", "serve"]
    assert "/feedback/health" in " ".join(service["healthcheck"]["test"])
    assert service["environment"]["MAILPIPE_FEEDBACK_HOST"] == "0.0.0.0"
    manifest = list(
        yaml.safe_load_all((folder / "kubernetes" / "feedback-receiver.yaml").read_text())
    )
    [deployment] = [d for d in manifest if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mailpipe", "feedback", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/feedback/health"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MAILPIPE_FEEDBACK_PORT"] == str(container["ports"][0]["containerPort"])
