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
        raise ConfigError(
            f"--since {text!r}: use a duration (30m, 1h, 7d) or an ISO 8601 "
            "time with its offset (2026-01-01T09:00:00+00:00)"
        ) from None
    if since.tzinfo is None:
        raise ConfigError(f"--since {text!r} has no UTC offset; add one, e.g. +00:00")
    return since


app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@app.callback()
@command
def check_command(
    ctx: typer.Context,
    suite: list[str] | None = typer.Option(
        None, "--suite", help="Run only this suite (a table name); repeat for several."
    ),
    since: str | None = typer.Option(
        None,
        "--since",
        help="Only rows changed within this duration (1h) or since this time "
        "(ISO 8601) in large tables, as the flows do; default: every row.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    list_suites: bool = typer.Option(False, "--list", help="List the suites and stop."),
    sync_config: bool = typer.Option(
        False,
        "--sync-config",
        help="For developers, after adding or editing a suite file: "
        "write the GX assets, validation definitions and checkpoints it needs, then stop.",
    ),
) -> None:
    """Check the table invariants with the Great Expectations suites in expectations/.

    Runs the flows' checkpoints by hand and updates the Data Docs (their path is printed).

    Exits 1 when any expectation fails, whatever the suite's policy. `mailpipe check worker`
    answers the flows' post-run checks; `mailpipe check history` lists them.
    """
    if ctx.invoked_subcommand is not None:
        return
    from mailpipe import quality

    if list_suites:
        rows = [
            {
                "suite": s.name,
                "policy": quality.effective_policy(s),
                "window": s.window or "whole table",
                "flows": ", ".join(s.flows),
                "expectations": s.expectations,
                "policy_reason": s.policy_reason,
            }
            for s in quality.suite_specs().values()
        ]
        if as_json:
            print_json(rows)
        else:  # the reasons are sentences: JSON only
            print_table(
                [{k: v for k, v in r.items() if k != "policy_reason"} for r in rows],
                title="Data-quality suites",
            )
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
        [
            {
                "suite": s.name,
                "policy": s.policy,
                "result": "[green]passed[/]"
                if s.success
                else ("[red]FAILED[/]" if s.policy == "fail" else "[yellow]warning[/]"),
                "expectations": f"{s.evaluated - len(s.failed)}/{s.evaluated}",
                "rows since": s.window or "all",
            }
            for s in report.suites
        ],
        title=f"Data quality ({report.elapsed_seconds:.1f} s)",
    )
    for s in report.suites:
        for r in s.failed:
            console.print(f"[red]✗[/] {r.summary()}", highlight=False, soft_wrap=True)
            for row in r.sample:
                console.print(f"    {row}", highlight=False, soft_wrap=True)
    if report.docs_url:
        console.print(f"Data Docs: {report.docs_url}", highlight=False, soft_wrap=True)


@app.command("worker")
@command
def worker_command(
    poll: float = typer.Option(
        5.0,
        "--poll",
        min=0.1,
        help="Seconds between looks at the "
        "queue when no notification comes (NOTIFY wakes it at once).",
    ),
    max_checks: int | None = typer.Option(
        None, "--max-checks", min=1, help="Stop after answering this many checks."
    ),
) -> None:
    """Answer the flows' post-run data-quality checks until stopped (Ctrl-C, SIGTERM).

    Imports Great Expectations once instead of once per flow run; `mailpipe serve` and
    `mailpipe up` start one. Run one (or more) next to your Prefect workers in production,
    with the same DATABASE_URL. Flow runs check themselves when no worker runs.
    """
    import asyncio
    import signal

    from mailpipe.quality_worker import run_worker

    logging.getLogger("mailpipe").setLevel(logging.INFO)
    logging.getLogger("mailpipe.quality").setLevel(logging.WARNING)  # one line per check

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)  # the current check finishes first
        return await run_worker(stop=stop, max_checks=max_checks, poll_seconds=poll)

    err_console.print("[dim]loading Great Expectations (a few seconds)...[/]")
    answered = asyncio.run(main())
    err_console.print(f"stopped after {answered} check(s)")


@app.command("history")
@command
def history_command(
    flow: str | None = typer.Option(None, "--flow", help="Only this flow's checks."),
    limit: int = typer.Option(20, "--limit", min=1, help="How many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The latest post-run checks: who answered, how long, which suites failed."""
    from mailpipe.cli.output import run
    from mailpipe.db import Database
    from mailpipe.quality_checks import workers_alive
    from mailpipe.queries import query

    async def fetch() -> tuple[int, list[dict[str, object]]]:
        async with Database(min_size=1, max_size=1) as db:
            return await workers_alive(db), await db.fetch_all(
                query("recent_quality_checks"), {"flow_name": flow, "limit": limit}
            )

    alive, rows = run(fetch())
    if as_json:
        print_json({"workers_alive": alive, "checks": rows})
        return
    print_table(
        [
            {
                "id": r["id"],
                "flow": r["flow_name"],
                "status": r["status"],
                "requested": r["requested_at"],
                "by": r["checked_by"],
                "seconds": r["elapsed_seconds"],
                "failed": ", ".join(r["failed_suites"]) or "-",
                "warnings": ", ".join(r["warning_suites"]) or "-",
                "error": r["error"] or "-",
            }
            for r in rows
        ],
        title=f"Data-quality checks ({alive} worker(s) running)",
    )
