"""``mailpipe metrics``: what monitor_email_production measures and judges, read-only."""

from __future__ import annotations

import typer

from mailpipe.cli.output import command, print_json, print_table, run
from mailpipe.db import Database


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
