"""snapshot_email_health: the daily health snapshot of delivery and providers, for the data team.

Daily after midnight (it replaces the pg_cron job of the same name). With no parameters it
computes yesterday in MAILPIPE_TIMEZONE; with ``start``/``end`` it computes (or recomputes)
every day of the range, a backfill. Each day is one SQL aggregation over that day's rows,
replacing the day's rows of email_health_snapshots in one transaction (so re-runs are safe).
Publishes the table artifact "email-health-snapshot" (the last day's rows, one per provider
plus '*' for all) and the markdown artifact "email-health-summary" (headline numbers and their
change versus the 7 days before).

Requires: DATABASE_URL (else the embedded Postgres) with migrations applied
(`mailpipe db migrate`, 0005 creates email_health_snapshots); MAILPIPE_TIMEZONE (default UTC).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from mailpipe import summaries
from mailpipe.quality_checks import check_flow_run
from mailpipe.runtime import publish_markdown_artifact, publish_table_artifact, run_logger
from mailpipe.snapshots import SnapshotRun, artifact_table, headline_markdown, run_snapshots


@task(cache_policy=NO_CACHE)
async def compute_snapshots(start: date | None, end: date | None) -> SnapshotRun:
    """Compute every day of the range in one task (one SQL statement per day)."""
    return await run_snapshots(start, end)


@flow(name="snapshot_email_health")
async def snapshot_email_health(
    start: date | None = None, end: date | None = None, check_quality: bool = True
) -> dict[str, Any]:
    """Snapshot yesterday (default) or every day from ``start`` to ``end`` inclusive.

    One bound alone computes that single day. Returns the days computed and the rows written.
    """
    started = datetime.now(UTC)  # the data-quality window: rows changed from here
    run = await compute_snapshots(start, end)
    last = run.last
    day = f"Email health on {last.day}"
    await publish_table_artifact(
        "email-health-snapshot",
        artifact_table(last.rows),
        f"{day} ({run.timezone}): one row per provider, '*' = all providers",
    )
    markdown = headline_markdown(last.rows[0], run.previous)
    await publish_markdown_artifact(
        "email-health-summary", markdown, f"{day} versus the 7 days before"
    )
    summary = summaries.snapshot_summary(run)
    run_logger().info(summaries.snapshot_log_line(summary))
    if check_quality:
        await check_flow_run("snapshot_email_health", started)
    return summary
