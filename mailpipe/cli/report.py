"""``mailpipe report``: the daily health snapshots as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from mailpipe.cli.output import command, console, run
from mailpipe.report import write_report


@command
def report_command(
    days: int = typer.Option(
        30, "--days", min=1, max=3660, help="Days to cover, ending yesterday (MAILPIPE_TIMEZONE)."
    ),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
) -> None:
    """Write a self-contained HTML report of the daily health snapshots (plots + tables)."""
    report = run(write_report(out, days))
    console.print(
        f"wrote {report.path} ({report.start} to {report.end}: "
        f"{report.days_with_data} day(s) with data, "
        f"{len(report.providers)} provider(s))"
    )
