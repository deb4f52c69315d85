"""Helpers for CLI tests: invoke the real ``mailpipe`` app, and reach the test's database from
synchronous tests (the CLI runs its own event loop, so these tests are not async)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from click.testing import Result
from typer.testing import CliRunner

from mailpipe.cli import app
from mailpipe.db import Database, Row

T = TypeVar("T")
runner = CliRunner()


def invoke(*args: str, input: str | None = None) -> Result:
    """Run ``mailpipe ARGS`` in-process, as the console script would."""
    return runner.invoke(app, list(args), input=input)


def ok(*args: str) -> Result:
    """Run a command that must succeed."""
    result = invoke(*args)
    assert result.exit_code == 0, f"mailpipe {' '.join(args)}:\n{result.output}"
    return result


def ok_json(*args: str) -> Any:
    """Run a command with --json that must succeed; its parsed stdout."""
    return json.loads(ok(*args, "--json").stdout)


def fails(*args: str, code: int = 1) -> str:
    """Run a command that must fail with one error line and no traceback; that line."""
    result = invoke(*args)
    assert result.exit_code == code, f"mailpipe {' '.join(args)}:\n{result.output}"
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def with_db(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work(db)`` against the test's database from a synchronous test."""

    async def go() -> T:
        async with Database(url, min_size=1, max_size=2) as db:
            return await work(db)

    return asyncio.run(go())


def fetch(url: str, sql: str, params: Any = None) -> list[Row]:
    """Rows of one query on the test's database."""
    return with_db(url, lambda db: db.fetch_all(sql, params))


def execute(url: str, sql: str, params: Any = None) -> int:
    """Run one statement on the test's database."""
    return with_db(url, lambda db: db.execute(sql, params))


def add_local_provider(server: Any, sender: str = "Shop <shop@example.com>") -> Result:
    """``mailpipe provider add local`` pointing at an in-process SMTP test server."""
    return ok(
        "provider",
        "add",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        "--tls",
        "none",
        "--from",
        sender,
    )
