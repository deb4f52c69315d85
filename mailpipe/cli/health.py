"""``mailpipe health check`` and ``mailpipe metrics``: the monitoring flows, at a terminal."""

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


@command
def metrics_command(
    window: list[str] | None = typer.Option(
        None,
        "--window",
        "-w",
        help="A rolling window such as 5m, 1h or 24h (repeatable). "
        "Default: MAILPIPE_METRICS_WINDOWS plus the alert rules' windows.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Queue, delivery and provider metrics, and the alert rules' verdicts, read-only.

    Shows what monitor_email_production measures and how each rule judges it now, then the
    alerts recorded by the flow (firing, and resolved in the last 24 h). Opens or resolves
    nothing: the flow owns the alert lifecycle.
    """
    from mailpipe import alerts
    from mailpipe.metrics import collect_metrics, parse_windows

    labels = parse_windows(",".join(window)) if window else None

    async def go():
        async with Database(min_size=1, max_size=2) as db:
            metrics = await collect_metrics(db, labels or alerts.required_windows())
            return metrics, alerts.evaluate_rules(metrics), await alerts.recent_alerts(db)

    metrics, evaluations, recorded = run(go())
    verdicts = [
        {
            "rule": e.rule,
            "scope": e.scope,
            "state": e.state,
            "severity": e.severity,
            "value": e.value,
            "threshold": e.threshold,
            "message": e.message,
        }
        for e in evaluations
    ]
    alert_rows = [
        {
            "id": a.id,
            "rule": a.rule,
            "scope": a.scope,
            "severity": a.severity,
            "status": a.status,
            "opened_at": a.opened_at,
            "last_seen_at": a.last_seen_at,
            "resolved_at": a.resolved_at,
            "occurrences": a.occurrences,
            "message": a.message,
        }
        for a in recorded
    ]
    if as_json:
        print_json({**metrics.as_dict(), "rules": verdicts, "alerts": alert_rows})
        return
    print_table([metrics.queue_row()], title="Queue now")
    columns = [
        "window",
        "scope",
        "sent",
        "send_rate_per_min",
        "failure_rate",
        "bounce_rate",
        "complaint_rate",
        "retries",
        "failed",
        "bounced",
        "failovers",
        "deferred",
        "suppressions_added",
        "limit_windows_exceeded",
        "availability",
    ]
    print_table([w.as_row() for w in metrics.windows], title="Rolling windows", columns=columns)
    print_table(metrics.provider_rows(), title="Providers")
    state_style = {"firing": "[red]firing[/]", "ok": "[green]ok[/]", "no_data": "no data"}
    print_table(
        [{**v, "state": state_style[v["state"]]} for v in verdicts],
        title="Alert rules now",
        columns=["rule", "scope", "state", "severity", "message"],
    )
    print_table(
        alert_rows,
        title="Recorded alerts (firing, and resolved in the last 24h)",
        columns=[
            "id",
            "rule",
            "scope",
            "severity",
            "status",
            "opened_at",
            "resolved_at",
            "occurrences",
            "message",
        ],
    )
