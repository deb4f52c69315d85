"""monitor_smtp_health: probe every SMTP provider, audit it, score it, suspend or restore it.

Every 5 minutes (it replaces the pg_cron job of the same name). Every provider not disabled,
suspended ones included, gets a real SMTP session (connect, EHLO, TLS, AUTH, NOOP, QUIT) at the
same time, under its own timeout: one smtp_connection_audit row each, a new health_score; a
failed probe counts towards suspension, a passed one restores. Status changes are emitted as
the events mailpipe.provider.suspended / .recovered; results as the artifact
"monitor-smtp-health". Requires: DATABASE_URL (else the embedded Postgres), migrated, and on
the worker the secrets the providers' credentials name (environment variable or Secret block).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from mailpipe import summaries
from mailpipe.db import Database
from mailpipe.monitoring import HealthReport, check_providers
from mailpipe.quality_checks import check_flow_run
from mailpipe.runtime import emit_provider_changes, publish_table_artifact, run_logger, skip_if_late

MAX_LATE = timedelta(minutes=5)  # one schedule interval


@task(cache_policy=NO_CACHE)
async def probe_providers(timeout_seconds: float | None) -> HealthReport:
    """Probe all providers concurrently and record the results (one task for the batch)."""
    async with Database(min_size=1, max_size=4) as db:
        return await check_providers(db, timeout=timeout_seconds)


@flow(name="monitor_smtp_health")
async def monitor_smtp_health(
    timeout_seconds: float | None = None, check_quality: bool = True
) -> dict[str, Any]:
    """Probe, audit and score every provider; returns counts and the status changes.

    ``timeout_seconds`` overrides every provider's own timeout for the whole probe.
    """
    started = datetime.now(UTC)  # the data-quality window: rows changed from here
    logger = run_logger()
    # After downtime, old scheduled runs would all probe the present: run only the on-time one.
    if reason := skip_if_late(MAX_LATE):
        logger.info(reason)
        return {"skipped": reason}
    report = await probe_providers(timeout_seconds)
    for line in summaries.health_problems(report):
        logger.warning(line)
    emit_provider_changes(report.changes)
    description = f"SMTP provider probes at {report.checked_at:%Y-%m-%d %H:%M:%S} UTC"
    await publish_table_artifact("monitor-smtp-health", report.rows(), description)
    summary = summaries.health_summary(report)
    logger.info("probed %(probed)s providers: %(ok)s ok, %(failed)s failed", summary)
    if check_quality:
        await check_flow_run("monitor_smtp_health", started)
    return summary
