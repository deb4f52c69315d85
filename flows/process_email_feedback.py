"""process_email_feedback: apply what providers reported after they accepted a message.

Every minute: reads the IMAP bounce mailbox when MAILPIPE_FEEDBACK_IMAP_HOST is set, then
applies the email_feedback_events inbox (filled by `mailpipe feedback serve`, that mailbox and
`mailpipe feedback import`) in batches: confirmation status, suppressions, bounced attempts
(docs/feedback.md); overlap is safe (SKIP LOCKED). Publishes the table artifact
"process-email-feedback-summary" and the markdown artifact "process-email-feedback-report"
(what was applied, what waits: unmatched, failed). Requires: DATABASE_URL (or the embedded
Postgres) with migrations applied; MAILPIPE_FEEDBACK_* for soft bounces and retries.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, task
from pydantic import Field

from mailpipe.feedback import runs
from mailpipe.quality_checks import check_flow_run
from mailpipe.retries import retry_on_transient
from mailpipe.runtime import publish_markdown_artifact, publish_table_artifact, run_logger


@task(retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=retry_on_transient)
async def apply_inbox(batch_size: int, max_batches: int | None) -> dict[str, Any]:
    """Apply every due inbox event; returns the run's figures and the backlog."""
    return await runs.apply_run(batch_size=batch_size, max_batches=max_batches)


@flow(name="process_email_feedback", log_prints=False)
async def process_email_feedback(
    batch_size: Annotated[
        int, Field(ge=1, le=50_000, description="Inbox events applied per statement.")
    ] = 1000,
    max_batches: Annotated[
        int | None, Field(ge=1, description="Stop after this many batches (none: all due).")
    ] = None,
    check_quality: Annotated[
        bool, Field(description="Check the rows this run changed (skipped when none).")
    ] = True,
) -> dict[str, Any]:
    """Apply due feedback events; returns the run's figures."""
    started = datetime.now(UTC)  # the data-quality window: rows changed from here
    summary = await apply_inbox(batch_size, max_batches)
    run_logger().info(runs.log_line(summary))
    table = runs.table(summary)
    await publish_table_artifact("process-email-feedback-summary", table, "Figures of this run.")
    report = runs.markdown(summary)
    await publish_markdown_artifact(
        "process-email-feedback-report", report, "process_email_feedback"
    )
    if check_quality and runs.did_anything(summary):
        await check_flow_run("process_email_feedback", started)
    return summary
