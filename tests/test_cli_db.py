"""``mailpipe db`` through the real console script, against a real Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from mailpipe.cli import app

runner = CliRunner()


def test_db_status_verify_and_url(env_database: str) -> None:
    result = runner.invoke(app, ["db", "migrate"])
    assert result.exit_code == 0, result.output
    assert "already up to date" in result.output

    result = runner.invoke(app, ["db", "status", "--json"])
    assert result.exit_code == 0, result.output
    states = json.loads(result.output)
    assert states and {s["state"] for s in states} == {"applied"}

    result = runner.invoke(app, ["db", "verify"])
    assert result.exit_code == 0, result.output
    assert "trigger_marks_invalid_email_failed" in result.output
    assert "FAILED" not in result.output

    result = runner.invoke(app, ["db", "url"])
    assert result.exit_code == 0 and result.output.strip() == env_database


def test_db_url_masks_the_password(monkeypatch) -> None:
    from mailpipe.config import get_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://app:s3cr3t-pw@db.example.com:5432/mail")
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["db", "url"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0
    assert "s3cr3t-pw" not in result.output
    assert result.output.strip() == "postgresql://app:***@db.example.com:5432/mail"


def test_unreachable_database_is_one_clear_line(monkeypatch, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://u:topsecret@127.0.0.1:1/x",
        "MAILPIPE_CONNECT_TIMEOUT": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mailpipe", "db", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "Postgres is unreachable" in proc.stderr and "topsecret" not in proc.stderr


def test_migrate_on_a_fresh_database_via_the_console_script(
    empty_database_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database_url}
    proc = subprocess.run(
        [sys.executable, "-m", "mailpipe", "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "applied 0001_create_base_tables" in proc.stdout
