"""monitor_email_production: queue, delivery and provider metrics over rolling windows; alerts.

Every 5 minutes (it replaces the pg_cron job of the same name). Measures, overall and per
provider, over the configured windows (MAILPIPE_METRICS_WINDOWS, default 5m,1h,24h), evaluates
the alert rules (MAILPIPE_ALERT_*), records their lifecycle in the alerts table, emits each
change as a Prefect event (mailpipe.alert.opened / .escalated / .resolved), optionally POSTs it
to MAILPIPE_ALERT_WEBHOOK_URL, and publishes the table artifact "email-production-metrics".
Requires: DATABASE_URL (else the embedded Postgres) with migrations applied.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from mailpipe import alerts, summaries
from mailpipe.db import Database
from mailpipe.metrics import ProductionMetrics, collect_metrics
from mailpipe.runtime import publish_table_artifact, run_logger, skip_if_late

MAX_LATE = timedelta(minutes=5)  # one schedule interval


@task(cache_policy=NO_CACHE)
async def measure_and_evaluate(
    windows: list[str] | None,
) -> tuple[ProductionMetrics, list[alerts.Evaluation], list[alerts.AlertTransition]]:
    """Collect the metrics, evaluate every rule, and record the alerts' lifecycle."""
    async with Database(min_size=1, max_size=2) as db:
        metrics = await collect_metrics(db, windows or alerts.required_windows())
        evaluations = alerts.evaluate_rules(metrics)
        return metrics, evaluations, await alerts.apply_alerts(db, evaluations)


@flow(name="monitor_email_production")
async def monitor_email_production(windows: list[str] | None = None) -> dict[str, Any]:
    """Measure, evaluate the alert rules, announce alert changes; returns a summary.

    ``windows`` (e.g. ["5m", "1h"]) overrides the configured windows; rules whose window is
    not measured are skipped for this run.
    """
    logger = run_logger()
    # After downtime, old scheduled runs would all measure the present: run only the on-time one.
    if reason := skip_if_late(MAX_LATE):
        logger.info(reason)
        return {"skipped": reason}
    metrics, evaluations, transitions = await measure_and_evaluate(windows)
    delivered = await alerts.notify(transitions, log=logger)
    description = summaries.production_description(metrics, evaluations)
    rows = [w.as_row() for w in metrics.windows]
    await publish_table_artifact("email-production-metrics", rows, description)
    summary = summaries.production_summary(
        metrics, evaluations, transitions, webhook_delivered=delivered
    )
    logger.info(summaries.production_log_line(metrics, summary))
    return summary
