"""monitor_smtp_health: probe every SMTP provider, audit it, score it, suspend or restore it.

Every 5 minutes (it replaces the pg_cron job of the same name). Every provider that is not
disabled, suspended ones included, gets a real SMTP session at the same time as the others
(connect, EHLO, STARTTLS or implicit TLS, AUTH, NOOP, QUIT) under its own timeout. Each probe
writes one smtp_connection_audit row; each provider gets a new health_score and last_checked; a
failed probe counts towards suspension, a passed one brings a suspended provider back. Status
changes are emitted as the Prefect events mailpipe.provider.suspended / .recovered, and the
results are published as the table artifact "monitor-smtp-health".

Requires: DATABASE_URL (else the embedded Postgres) with migrations applied
(`mailpipe db migrate`), and on the worker the secrets the providers' credentials references
name (an environment variable or a Prefect Secret block).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from mailpipe.db import Database
from mailpipe.monitoring import HealthReport, check_providers
from mailpipe.orchestration import skip_if_late
from mailpipe.quality_checks import check_flow_run
from mailpipe.runtime import emit_provider_changes, table_rows

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
    logger = get_run_logger()
    # After downtime, old scheduled runs would all probe the present: run only the on-time one.
    if reason := skip_if_late(MAX_LATE):
        logger.info(reason)
        return {"skipped": reason}
    report = await probe_providers(timeout_seconds)
    for probe in report.failed:
        logger.warning("provider %s: %s (%s)", probe.provider_name, probe.result, probe.error)
    for change in report.changes:
        logger.warning("provider %s %s", change.provider_name, change.kind)
    emit_provider_changes(report.changes)
    await acreate_table_artifact(
        key="monitor-smtp-health",
        table=table_rows(report.rows()),
        description=f"SMTP provider probes at {report.checked_at:%Y-%m-%d %H:%M:%S} UTC",
    )
    summary = {
        "probed": len(report.probes),
        "ok": len(report.probes) - len(report.failed),
        "failed": len(report.failed),
        "suspended": [c.provider_name for c in report.changes if c.kind == "suspended"],
        "recovered": [c.provider_name for c in report.changes if c.kind == "recovered"],
    }
    logger.info("probed %(probed)s providers: %(ok)s ok, %(failed)s failed", summary)
    if check_quality:
        await check_flow_run("monitor_smtp_health", started)
    return summary
