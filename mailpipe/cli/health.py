"""``mailpipe health check``: monitor_smtp_health's probes, at a terminal."""

from __future__ import annotations

from typing import Any

import typer

from mailpipe.cli.output import command, console, print_json, print_table, run
from mailpipe.db import Database
from mailpipe.monitoring import HealthReport, check_providers

app = typer.Typer(help="SMTP provider health: probe providers now.", no_args_is_help=True)


@app.command("check")
@command
def check_command(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Probe only: write no audit row, change no score or status."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", min=0.1, help="Seconds per probe (default: each provider's own)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Probe every provider that is not disabled, as monitor_smtp_health does.

    Opens a real SMTP session to each (connect, TLS, AUTH, NOOP, QUIT) concurrently, records
    the results (audit rows, health scores, suspension or recovery) unless --dry-run, and
    prints them. Exits 1 when any probe failed.
    """

    async def go() -> HealthReport:
        async with Database(min_size=1, max_size=4) as db:
            return await check_providers(db, timeout=timeout, dry_run=dry_run)

    report = run(go())
    rows = report.rows()
    if as_json:
        print_json(
            {
                "checked_at": report.checked_at,
                "recorded": report.recorded,
                "probes": rows,
                "changes": [
                    {
                        "provider": c.provider_name,
                        "before": c.before,
                        "after": c.after,
                        "suspended_until": c.suspended_until,
                    }
                    for c in report.changes
                ],
            }
        )
    else:
        print_table(
            _human(rows),
            title="SMTP provider probes" + (" (dry run: nothing recorded)" if dry_run else ""),
        )
        for probe in report.failed:  # below the table: errors are long, names stay readable
            console.print(
                f"[red]{probe.provider_name}[/]: {probe.error}", highlight=False, soft_wrap=True
            )
        for change in report.changes:
            console.print(
                f"[yellow]{change.provider_name}[/] {change.kind} (was {change.before})",
                highlight=False,
            )
        if not rows:
            console.print("no provider to probe: add one to smtp_provider_configs")
        else:
            console.print(f"{len(rows) - len(report.failed)} of {len(rows)} providers answered")
    if report.failed:
        raise typer.Exit(1)


def _human(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Short columns that fit an 80-column terminal; errors are printed below the table."""
    out = []
    for row in rows:
        status = row["status"] or "-"
        if status == "suspended" and row["suspended_until"] is not None:
            status += f" until {row['suspended_until']:%H:%M:%S}"
        ok = row["result"] == "ok"
        out.append(
            {
                "provider": row["provider"],
                "result": f"[green]{row['result']}[/]" if ok else f"[red]{row['result']}[/]",
                "ip": row["ip_address"],
                "ms": f"{row['latency_ms']:.0f}",
                "score": row["health_score"],
                "status": status,
            }
        )
    return out
