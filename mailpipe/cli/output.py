"""How the CLI talks to a person: rich tables, ``--json`` for scripts, one-line errors."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mailpipe.errors import MailpipeError

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
T = TypeVar("T")

state = {"debug": False}


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(data, default=_default, indent=2, ensure_ascii=False) + "\n")


def print_table(
    rows: Iterable[Mapping[str, Any]], *, title: str | None = None, columns: list[str] | None = None
) -> None:
    """A rich table of dict rows (columns from the first row unless given)."""
    rows = list(rows)
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    if not rows:
        table.caption = "(no rows)"
    console.print(table)


def short_time(value: datetime | None) -> str | None:
    """A time for a narrow table column (month-day hour:minute:second)."""
    return None if value is None else f"{value:%m-%d %H:%M:%S}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S%z")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def command(func: Callable[P, T]) -> Callable[P, T]:
    """Wrap a command: mailpipe errors become one line and exit 1 (traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except MailpipeError as exc:
            if state["debug"]:
                raise
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from a synchronous command."""
    return asyncio.run(coro)
