"""``mailpipe run FLOW``: one real flow run in-process, on a real Prefect API and Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailpipe.testing.smtpd import SMTPTestServer
from tests.cli_support import add_local_provider, fails, fetch, invoke, ok, ok_json


@pytest.fixture(autouse=True, scope="module")
def _prefect_logging_outside_cli_runner() -> None:
    # Prefect sets up its console log handlers when prefect.main is imported (`import prefect`
    # is lazy): on pytest's streams here, not on the short-lived streams of one CliRunner
    # invocation (closed afterwards).
    import prefect.main  # noqa: F401


def test_run_process_email_queue_and_monitor_smtp_health(
    prefect_harness, env_database: str, smtpd: SMTPTestServer
) -> None:
    add_local_provider(smtpd, "shop@example.com")
    ok("template", "add", "welcome", "--subject", "Hi {{ name }}", "--text", "Hello")
    for n in range(5):
        ok(
            "enqueue",
            "--to",
            f"user{n}@example.com",
            "--template",
            "welcome",
            "--data",
            '{"name": "Ann"}',
        )

    summary = ok_json(
        "run",
        "process_email_queue",
        "--param",
        "batch_size=2",
        "--param",
        "concurrency=1",
        "-p",
        "max_events=4",
    )
    assert (summary["sent"], summary["batches"], summary["stopped_by"]) == (4, 2, "max_events")
    assert len(smtpd.accepted) == 4
    result = ok("run", "process_email_queue")
    assert "process_email_queue: completed" in result.output
    assert {
        r["status"] for r in fetch(env_database, "SELECT status FROM communication_events")
    } == {"sent"}

    health = ok_json("run", "monitor_smtp_health")
    assert (health["probed"], health["ok"], health["failed"]) == (1, 1, 0)
    assert fetch(env_database, "SELECT provider_name, result FROM smtp_connection_audit") == [
        {"provider_name": "local", "result": "ok"}
    ]


def test_a_failed_flow_run_exits_non_zero(
    prefect_harness, env_database: str, project_root: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    # The console script in a subprocess, against the test's Prefect API and database.
    env = {
        **os.environ,
        "DATABASE_URL": env_database,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    command = [
        sys.executable,
        "-m",
        "mailpipe",
        "run",
        "monitor_email_production",
        "--param",
        'windows=["5m", "soon"]',
    ]
    proc = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, cwd=project_root
    )
    assert proc.returncode == 1, proc.stderr
    assert (
        "error: flow run monitor_email_production ended Failed: ConfigError: window "
        "'soon' is not a duration like 30s, 5m, 1h or 7d"
    ) in proc.stderr.splitlines()
    assert "Finished in state Failed" in proc.stderr  # Prefect's run log, kept
    assert "Traceback" not in proc.stderr + proc.stdout

    proc = subprocess.run(
        [*command[:3], "--debug", *command[3:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=project_root,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_bad_flow_names_and_parameters_are_refused_before_running(env_database: str) -> None:
    line = fails("run", "send_everything")
    assert line == (
        "error: unknown flow 'send_everything': choose one of process_email_queue, "
        "monitor_smtp_health, monitor_email_production, snapshot_email_health, "
        "process_email_feedback"
    )
    assert "has no parameter batch; its parameters are: batch_size, concurrency" in fails(
        "run", "process_email_queue", "--param", "batch=5"
    )
    assert "invalid --param for process_email_queue" in fails(
        "run", "process_email_queue", "--param", "batch_size=0"
    )
    assert "is not key=value" in fails("run", "process_email_queue", "--param", "batch_size")
    result = invoke("run", "--help")
    assert result.exit_code == 0 and "snapshot_email_health" in result.output


def test_without_a_prefect_api_runs_reuse_one_kept_local_server(
    env_database: str, project_root: Path, tmp_path: Path
) -> None:
    import contextlib
    import json

    from mailpipe.deploy.processes import pid_is_alive

    # No PREFECT_API_URL and an empty Prefect profile: mailpipe starts its own server.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        DATABASE_URL=env_database,
        MAILPIPE_DATA_DIR=str(tmp_path / "data"),
        PREFECT_HOME=str(tmp_path / "client-home"),
    )
    state = tmp_path / "data" / "prefect" / "local" / "server.json"

    def mailpipe(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "mailpipe", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            cwd=project_root,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return proc

    def servers() -> list[int]:
        # Processes running in the kept server's home: the server, and only one of it.
        home = state.parent.resolve()
        found = []
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and (proc / "cwd").resolve() == home:
                    found.append(int(proc.name))
        return found

    try:
        # Two commands at once, no server yet: one starts it, the other waits and reuses it.
        started = [
            subprocess.Popen(
                [sys.executable, "-m", "mailpipe", "run", "process_email_queue", "--json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=project_root,
            )
            for _ in range(2)
        ]
        for proc in started:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0 and "Traceback" not in out + err, out + err
            assert json.loads(out)["stopped_by"] == "empty"
        server = json.loads(state.read_text())
        assert servers() == [server["pid"]]  # kept after the commands ended, and only one

        second = mailpipe("run", "monitor_email_production", "--json")
        assert "queue" in json.loads(second.stdout)
        assert json.loads(state.read_text()) == server  # the same server, not a second one
        status = json.loads(mailpipe("server", "status", "--json").stdout)
        assert (status["running"], status["healthy"], status["pid"]) == (True, True, server["pid"])
        assert status["api_url"] == f"http://127.0.0.1:{server['port']}/api"
        log = (state.parent / "server.log").read_text(errors="replace")
        assert "database is locked" not in log
    finally:
        stopped = mailpipe("server", "stop")
    assert f"pid {server['pid']}" in stopped.stdout
    assert not pid_is_alive(server["pid"]) and not state.exists()
    assert mailpipe("server", "stop").stdout.strip() == "not running"
