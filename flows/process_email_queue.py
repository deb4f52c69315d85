"""process_email_queue: deliver due emails from the communication_events outbox.

Replaces the every-minute pg_cron job of the same name. One task drains the queue in batches
(plain asyncio inside: claim with SKIP LOCKED, render, send over persistent SMTP connections,
record outcomes) until nothing is due or the time budget ends, so a run never overlaps the next
minute's by much; concurrent runs are safe. Publishes the counts as an artifact.

Requires: DATABASE_URL (or the embedded default) and, for each provider with AUTH, the
environment variable or Prefect Secret block its credentials reference names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from pydantic import Field

from mailpipe.delivery import drain_run
from mailpipe.delivery import summary as run_summary
from mailpipe.quality_checks import check_flow_run
from mailpipe.retries import retry_on_transient
from mailpipe.runtime import current_flow_run_id


@task(retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=retry_on_transient)
async def drain(
    batch_size: int,
    concurrency: int,
    time_budget_seconds: float,
    max_events: int | None,
    processes: int,
) -> dict[str, Any]:
    """Drain due events; returns the whole run's counts, also those of failed attempts."""
    result = await drain_run(
        current_flow_run_id() or "local",
        batch_size=batch_size,
        concurrency=concurrency,
        time_budget=time_budget_seconds,
        max_events=max_events,
        processes=processes,
    )
    return result.summary()


@flow(name="process_email_queue", log_prints=False)
async def process_email_queue(
    batch_size: Annotated[int, Field(ge=1, le=5000, description="Events claimed per batch.")] = 200,
    concurrency: Annotated[
        int, Field(ge=1, le=32, description="Drainers in this run, each claiming its own batches.")
    ] = 2,
    time_budget_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="Stop claiming after this long, so every-minute runs do not pile up.",
        ),
    ] = 50.0,
    max_events: Annotated[
        int | None, Field(ge=1, description="Stop after this many events (default: no limit).")
    ] = None,
    processes: Annotated[
        int,
        Field(
            ge=1, le=64, description="OS processes draining in parallel (use the machine's cores)."
        ),
    ] = 1,
    check_quality: Annotated[
        bool,
        Field(
            description="Run the data-quality suites on the "
            "rows this run changed (skipped when it changed "
            "none)."
        ),
    ] = True,
) -> dict[str, Any]:
    """Deliver due emails; returns the run's counts."""
    started = datetime.now(UTC)  # the data-quality window: rows changed from here
    logger = get_run_logger()
    summary = await drain(batch_size, concurrency, time_budget_seconds, max_events, processes)
    logger.info("%s", run_summary.log_line(summary))
    await acreate_table_artifact(
        key="process-email-queue-summary",
        table=run_summary.table(summary),
        description="Outcomes of this process_email_queue run.",
    )
    await acreate_markdown_artifact(
        key="process-email-queue-report",
        markdown=run_summary.markdown(summary),
        description="process_email_queue summary",
    )
    if check_quality and run_summary.did_anything(summary):
        await check_flow_run("process_email_queue", started)
    return summary
