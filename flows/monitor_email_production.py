"""monitor_email_production: queue, delivery and provider metrics over rolling windows; alerts.

Every 5 minutes (it replaces the pg_cron job of the same name). Measures, overall and per
provider, over the configured windows (MAILPIPE_METRICS_WINDOWS, default 5m,1h,24h): queue
depth and lag, stuck leases, send rate, failure, bounce and complaint rates, retry backlog,
suppression growth, rate-limit deferrals and provider availability. Evaluates the alert rules
(thresholds from MAILPIPE_ALERT_*), records their lifecycle in the alerts table (opened, still
firing, resolved: no re-alert while a condition stays true), emits each opening, escalation and
resolution as a Prefect event (mailpipe.alert.opened / .escalated / .resolved: point a Prefect
Automation at them for Slack, email or PagerDuty), optionally POSTs it to
MAILPIPE_ALERT_WEBHOOK_URL, and publishes the metrics as the table artifact
"email-production-metrics".

Requires: DATABASE_URL (else the embedded Postgres) with migrations applied (`mailpipe db
migrate`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from mailpipe import alerts
from mailpipe.db import Database
from mailpipe.metrics import ProductionMetrics, collect_metrics
from mailpipe.orchestration import skip_if_late
from mailpipe.runtime import table_rows

MAX_LATE = timedelta(minutes=5)  # one schedule interval


@task(cache_policy=NO_CACHE)
async def measure_and_evaluate(
    windows: list[str] | None,
) -> tuple[ProductionMetrics, list[alerts.Evaluation], list[alerts.AlertTransition]]:
    """Collect the metrics, evaluate every rule, and record the alerts' lifecycle."""
    async with Database(min_size=1, max_size=2) as db:
        metrics = await collect_metrics(db, windows or alerts.required_windows())
        evaluations = alerts.evaluate_rules(metrics)
        transitions = await alerts.apply_alerts(db, evaluations)
    return metrics, evaluations, transitions


@flow(name="monitor_email_production")
async def monitor_email_production(windows: list[str] | None = None) -> dict[str, Any]:
    """Measure, evaluate the alert rules, announce alert changes; returns a summary.

    ``windows`` (e.g. ["5m", "1h"]) overrides the configured windows; rules whose window is
    not measured are skipped for this run.
    """
    logger = get_run_logger()
    # After downtime, old scheduled runs would all measure the present: run only the on-time one.
    if reason := skip_if_late(MAX_LATE):
        logger.info(reason)
        return {"skipped": reason}
    metrics, evaluations, transitions = await measure_and_evaluate(windows)
    delivered = await alerts.notify(transitions, log=logger)
    firing = [e for e in evaluations if e.state == "firing"]
    firing_text = ", ".join(f"{e.rule} ({e.scope}, {e.severity})" for e in firing) or "none"
    await acreate_table_artifact(
        key="email-production-metrics",
        table=table_rows(w.as_row() for w in metrics.windows),
        description=f"{metrics.summary()}. Firing: {firing_text}.",
    )
    summary = {
        "queue": table_rows([metrics.queue_row()])[0],
        "firing": [f"{e.rule}:{e.scope}:{e.severity}" for e in firing],
        "opened": [f"{t.alert.rule}:{t.alert.scope}" for t in transitions if t.kind == "opened"],
        "escalated": [
            f"{t.alert.rule}:{t.alert.scope}" for t in transitions if t.kind == "escalated"
        ],
        "resolved": [
            f"{t.alert.rule}:{t.alert.scope}" for t in transitions if t.kind == "resolved"
        ],
        "webhook_delivered": delivered,
    }
    logger.info(
        "queue %s due, lag %.0fs; %s rules firing; opened %s, resolved %s",
        metrics.queue.due,
        metrics.queue.queue_lag_seconds,
        len(firing),
        len(summary["opened"]),
        len(summary["resolved"]),
    )
    return summary
