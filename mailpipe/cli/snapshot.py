"""``mailpipe snapshot``: compute, backfill and export the daily health snapshots."""

from __future__ import annotations

import sys
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mailpipe.cli.output import command, console, err_console, print_json, print_table, run
from mailpipe.db import Database
from mailpipe.errors import MailpipeError
from mailpipe.snapshots import ALL_PROVIDERS, DaySnapshot, aload, run_snapshots

# The group's help is snapshot_command's docstring: `mailpipe snapshot` itself computes.
app = typer.Typer(invoke_without_command=True)

_DAY = ["%Y-%m-%d"]


def _day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


@app.callback(invoke_without_command=True)
@command
def snapshot_command(
    ctx: typer.Context,
    from_: datetime | None = typer.Option(
        None, "--from", formats=_DAY, help="First day (YYYY-MM-DD). Alone: that day only."
    ),
    to: datetime | None = typer.Option(
        None, "--to", formats=_DAY, help="Last day, inclusive (YYYY-MM-DD)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the rows written as JSON."),
) -> None:
    """Compute the daily health snapshot: yesterday by default, or every day --from..--to.

    Days are cut in MAILPIPE_TIMEZONE. Re-running a day replaces its rows; a day with no
    traffic gets zero rows. Run `mailpipe snapshot export --help` to export.
    """
    if ctx.invoked_subcommand is not None:
        return
    progress = Progress(
        TextColumn("[bold]snapshot[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    task_ids: list = []

    def on_range(first: date, last: date) -> None:
        task_ids.append(progress.add_task("", total=(last - first).days + 1))

    def on_day(snap: DaySnapshot) -> None:
        progress.update(task_ids[0], advance=1, description=str(snap.day))

    with progress:
        result = run(run_snapshots(_day(from_), _day(to), on_day=on_day, on_range=on_range))

    rows = [row for snap in result.days for row in snap.rows]
    if as_json:
        print_json(rows)
        return
    # Narrow enough for an 80-column terminal; --json has every column.
    print_table(
        [
            {
                "day": str(s.day),
                "created": s.rows[0]["events_created"],
                "sent": s.rows[0]["sent"],
                "failed": s.rows[0]["failed"],
                "retried": s.rows[0]["retried"],
                "success": _pct(s.rows[0]["delivery_success_rate"]),
                "bounces": _pct(s.rows[0]["hard_bounce_rate"]),
                "avail.": _pct(s.rows[0]["availability"]),
            }
            for s in result.days
            if s.rows and s.rows[0]["provider_name"] == ALL_PROVIDERS
        ],
        title=f"Email health snapshots ({result.timezone}, all providers)",
    )
    console.print(
        f"{len(result.days)} day(s), {len(rows)} rows written ({result.start} to {result.end})"
    )


class ExportFormat(StrEnum):
    """File formats of ``snapshot export``."""

    csv = "csv"
    parquet = "parquet"


@app.command("export")
@command
def export_command(
    fmt: ExportFormat = typer.Option(
        ExportFormat.csv,
        "--format",
        case_sensitive=False,
        help="csv or parquet (keeps the dtypes).",
    ),
    from_: datetime | None = typer.Option(
        None, "--from", formats=_DAY, help="First day (default: the earliest)."
    ),
    to: datetime | None = typer.Option(
        None, "--to", formats=_DAY, help="Last day (default: the latest)."
    ),
    provider: str | None = typer.Option(
        None, "--provider", help="One provider ('*' = the all-provider rows)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="File to write (default email_health_snapshots.<format>); '-' writes CSV to stdout.",
    ),
) -> None:
    """Export stored snapshots (typed, as `mailpipe.snapshots.load` returns them)."""
    if _day(from_) and _day(to) and _day(from_) > _day(to):
        raise MailpipeError(f"--from {_day(from_)} is after --to {_day(to)}: swap them")
    path = out or Path(f"email_health_snapshots.{fmt.value}")
    if str(path) == "-" and fmt is ExportFormat.parquet:
        raise MailpipeError("parquet cannot go to stdout: give --out FILE.parquet")

    async def go():
        async with Database(min_size=1, max_size=1) as db:
            return await aload(db, _day(from_), _day(to), provider)

    frame = run(go())
    if frame.empty:
        raise MailpipeError(
            "no snapshots match: compute some with `mailpipe snapshot "
            "--from YYYY-MM-DD --to YYYY-MM-DD` or widen --from/--to/--provider"
        )
    try:
        if str(path) == "-":
            frame.to_csv(sys.stdout, index=False)
            return
        if fmt is ExportFormat.csv:
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    except ImportError as exc:
        raise MailpipeError(
            f"parquet export needs pyarrow ({exc}): install mailpipe with its "
            "dependencies (uv sync) or use --format csv"
        ) from exc
    except OSError as exc:
        raise MailpipeError(f"cannot write {path}: {exc.strerror}; pick another --out") from exc
    console.print(f"wrote {len(frame)} rows ({frame['snapshot_date'].nunique()} days) to {path}")
