"""``mailpipe check``: run the data-quality suites (Great Expectations) by hand."""

from __future__ import annotations

import datetime as dt
import logging

import typer

from mailpipe.cli.output import (
    command,
    console,
    err_console,
    print_json,
    print_table,
    state,
)
from mailpipe.errors import ConfigError


def _parse_since(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    from mailpipe.metrics import parse_window

    try:
        return dt.datetime.now(dt.UTC) - parse_window(text)
    except ConfigError:
        pass
    try:
        since = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r}: use a duration (30m, 1h, 7d) or an ISO 8601 "
                          "time with its offset (2026-01-01T09:00:00+00:00)") from None
    if since.tzinfo is None:
        raise ConfigError(f"--since {text!r} has no UTC offset; add one, e.g. +00:00")
    return since


@command
def check_command(
    suite: list[str] | None = typer.Option(
        None, "--suite", help="Run only this suite (a table name); repeat for several."),
    since: str | None = typer.Option(
        None, "--since", help="Only rows changed within this duration (1h) or since this time "
        "(ISO 8601) in large tables, as the flows do; default: every row."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    list_suites: bool = typer.Option(False, "--list", help="List the suites and stop."),
    sync_config: bool = typer.Option(
        False, "--sync-config", help="For developers, after adding or editing a suite file: "
        "write the GX assets, validation definitions and checkpoints it needs, then stop."),
) -> None:
    """Check the table invariants with the Great Expectations suites in expectations/.

    Runs the flows' checkpoints by hand and updates the Data Docs (their path is printed).

    Exits 1 when any expectation fails, whatever the suite's policy.
    """
    from mailpipe import quality

    if list_suites:
        settings_rows = [
            {"suite": s.name, "policy": quality.effective_policy(s),
             "window": s.window or "whole table", "flows": ", ".join(s.flows),
             "expectations": s.expectations}
            for s in quality.suite_specs().values()]
        if as_json:
            print_json(settings_rows)
        else:
            print_table(settings_rows, title="Data-quality suites")
        return
    if sync_config:
        changed = quality.sync_config()
        console.print("\n".join(f"wrote {c}" for c in changed) or "already in sync")
        return
    window = _parse_since(since)
    if not as_json:
        err_console.print("[dim]loading Great Expectations (a few seconds)...[/]")
    quality_log = logging.getLogger("mailpipe.quality")
    level = quality_log.level
    if not state["debug"]:  # the report below says it all: no log line per failure too
        quality_log.setLevel(logging.CRITICAL)
    try:
        report = quality.run_checks(suite or None, window)
    finally:
        quality_log.setLevel(level)
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report)
    if not report.success:
        raise typer.Exit(1)


def _print_report(report: object) -> None:
    from mailpipe.quality import QualityReport

    assert isinstance(report, QualityReport)
    print_table(
        [{"suite": s.name, "policy": s.policy,
          "result": "[green]passed[/]" if s.success else
          ("[red]FAILED[/]" if s.policy == "fail" else "[yellow]warning[/]"),
          "expectations": f"{s.evaluated - len(s.failed)}/{s.evaluated}",
          "rows since": s.window or "all"} for s in report.suites],
        title=f"Data quality ({report.elapsed_seconds:.1f} s)")
    for s in report.suites:
        for r in s.failed:
            console.print(f"[red]✗[/] {r.summary()}", highlight=False, soft_wrap=True)
            for row in r.sample:
                console.print(f"    {row}", highlight=False, soft_wrap=True)
    if report.docs_url:
        console.print(f"Data Docs: {report.docs_url}", highlight=False, soft_wrap=True)
