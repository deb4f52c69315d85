"""process_email_queue: deliver due emails from the communication_events outbox.

Every minute (it replaces the pg_cron job): drains due events in batches (SKIP LOCKED claims,
render, send, record) until none is due or the time budget ends; overlap is safe. Requires:
DATABASE_URL (or the embedded Postgres) and the secret each provider's AUTH names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, task
from pydantic import Field

from mailpipe.delivery import drain_run
from mailpipe.delivery import summary as run_summary
from mailpipe.quality_checks import check_flow_run
from mailpipe.retries import retry_on_transient
from mailpipe.runtime import (
    current_flow_run_id,
    publish_markdown_artifact,
    publish_table_artifact,
    run_logger,
)


@task(retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=retry_on_transient)
async def drain(time_budget: float, **limits: Any) -> dict[str, Any]:
    """Drain due events; returns the whole run's counts, also those of failed attempts."""
    run = current_flow_run_id() or "local"
    return (await drain_run(run, time_budget=time_budget, **limits)).summary()


@flow(name="process_email_queue", log_prints=False)
async def process_email_queue(
    batch_size: Annotated[int, Field(ge=1, le=5000, description="Events claimed per batch.")] = 200,
    concurrency: Annotated[int, Field(ge=1, le=32, description="Drainers in this run.")] = 2,
    time_budget_seconds: Annotated[
        float, Field(gt=0, le=3600, description="Stop claiming after this long (no pile-up).")
    ] = 50.0,
    max_events: Annotated[int | None, Field(ge=1, description="Stop after this many.")] = None,
    processes: Annotated[int, Field(ge=1, le=64, description="OS processes draining.")] = 1,
    check_quality: Annotated[
        bool, Field(description="Check the rows this run changed (skipped when none).")
    ] = True,
) -> dict[str, Any]:
    """Deliver due emails; returns the run's counts."""
    started = datetime.now(UTC)  # the data-quality window: rows changed from here
    limits = {"batch_size": batch_size, "concurrency": concurrency, "max_events": max_events}
    summary = await drain(time_budget_seconds, processes=processes, **limits)
    run_logger().info(run_summary.log_line(summary))
    table = run_summary.table(summary)
    await publish_table_artifact("process-email-queue-summary", table, "Outcomes of this run.")
    report = run_summary.markdown(summary)
    await publish_markdown_artifact("process-email-queue-report", report, "process_email_queue")
    if check_quality and run_summary.did_anything(summary):
        await check_flow_run("process_email_queue", started)
    return summary
