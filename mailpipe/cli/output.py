"""How the CLI talks to a person: rich tables, ``--json`` for scripts, one-line errors."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from typer._click.exceptions import NoArgsIsHelpError
from typer.core import TyperGroup

from mailpipe.errors import MailpipeError
from mailpipe.serialization import dumps

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
T = TypeVar("T")

state = {"debug": False}


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (:func:`mailpipe.serialization.dumps`)."""
    sys.stdout.write(dumps(data, indent=2) + "\n")


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
    _print_whole(table)


# Wider than any row a table of names, statuses and counts can have: the cap only bounds
# rich's layout work.
_UNBOUNDED = 100_000


def _print_whole(table: Table) -> None:
    """Print ``table`` on stdout: as wide as the terminal on a terminal; piped or redirected, at
    its natural width, so ``grep`` and ``less`` see every name and status whole (rich would cut
    cells at 80 columns otherwise)."""
    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update_width(_UNBOUNDED), table).maximum
    title = len(str(table.title or ""))
    Console(file=sys.stdout, width=max(natural, title, 1)).print(table)


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
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class OneLineErrors(TyperGroup):
    """The root command: a usage error (unknown command or option, a missing or bad value)
    prints one ``error:`` line on stderr naming the ``--help`` to read, and exits 1, the code of
    every other error mailpipe reports; click's own would be a framed box and exit 2.

    ``mailpipe`` or a command group without a command still prints its help (on stdout), and
    exits 1: nothing was done."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; with ``standalone_mode`` (the console script), exit."""
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            if not standalone_mode:
                raise
            typer.echo(exc.format_message())
            sys.exit(1)
        except typer.TyperException as exc:  # click's ClickException, vendored by typer
            if not standalone_mode:
                raise
            message = _one_line(exc.format_message())
            context = getattr(exc, "ctx", None)
            if context is not None:
                message = f"{message} (see `{context.command_path} --help`)"
            fail(message)
            sys.exit(1)
        except typer.Abort:
            if not standalone_mode:
                raise
            # click aborts when a question gets no answer (stdin closed or Ctrl-D).
            fail("aborted: no answer was read; pass --yes to skip the question")
            sys.exit(1)
        if not standalone_mode:
            return result
        # Without standalone mode typer returns a command's ``typer.Exit`` code as the result.
        sys.exit(result if isinstance(result, int) else 0)


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
