"""``mailpipe deliver``: send events as soon as they are due (mailpipe.delivery.deliverer)."""

from __future__ import annotations

import logging
import os
from typing import Any

import typer

from mailpipe.cli.output import command, err_console
from mailpipe.errors import MailpipeError


def prefect_report() -> Any:
    """Report to Prefect as events (``mailpipe.deliverer.started`` / ``heartbeat`` /
    ``stopped``) when a Prefect API is configured; None otherwise (no Prefect import)."""
    if not os.environ.get("PREFECT_API_URL"):
        return None
    from mailpipe.identity import process_name
    from mailpipe.runtime import emit

    name = process_name("deliverer")

    def report(what: str, payload: dict[str, Any]) -> None:
        emit(
            f"mailpipe.deliverer.{what}",
            resource={"prefect.resource.id": f"mailpipe.deliverer.{name}"},
            payload=payload,
        )

    return report


async def hosted_sweeper(stop: Any) -> None:
    """The process_email_queue runs this deliverer executes (mailpipe.deploy.sweeper); its
    failures are logged and never stop delivery."""
    from mailpipe.deploy.sweeper import HostedSweeper

    try:
        stats = await HostedSweeper().run(stop)
    except Exception:
        logging.getLogger("mailpipe.deploy.sweeper").exception("hosted sweeper stopped")
        return
    logging.getLogger("mailpipe.deploy.sweeper").info("hosted sweeper: %s", stats.summary())


@command
def deliver_command(
    poll: float = typer.Option(
        5.0,
        "--poll",
        min=0.1,
        help="Seconds between looks at the queue without a notification (retries and "
        "scheduled sends become due by the clock and do not notify).",
    ),
    batch_size: int = typer.Option(200, "--batch-size", min=1, help="The bulk lane's batches."),
    concurrency: int = typer.Option(
        1, "--concurrency", min=1, help="Bulk drainers side by side in this process."
    ),
    priority_lane: int = typer.Option(
        1,
        "--priority-lane",
        min=-1,
        max=9,
        help="A lane of its own for events of this priority or better (password resets, "
        "codes); -1: no priority lane.",
    ),
    priority_batch_size: int = typer.Option(
        20, "--priority-batch-size", min=1, help="The priority lane's batches."
    ),
    events: bool = typer.Option(
        True,
        "--events/--no-events",
        help="Send started/heartbeat/stopped events to Prefect when PREFECT_API_URL is set.",
    ),
    sweeper: bool | None = typer.Option(
        None,
        "--sweeper/--no-sweeper",
        help="Execute the process_email_queue deployment's scheduled runs in this process "
        "(about 0.1 CPU-s a run instead of a new flow-run process each minute; workers run "
        "them whenever no deliverer does). Default: on when PREFECT_API_URL is set.",
    ),
) -> None:
    """Deliver events as soon as they are due, until stopped (Ctrl-C, SIGTERM).

    Listens for the database's notifications (rows inserted by mailpipe or by your app's own
    SQL) and drains with the same engine as process_email_queue, which stays as the sweeper.
    On SIGTERM the batch in hand is finished and recorded, then it exits 0. `mailpipe serve`
    and `mailpipe up` start one; run one or more per machine in production.
    """
    import asyncio
    import signal

    from mailpipe.delivery.deliverer import DelivererOptions, run_deliverer

    logging.getLogger("mailpipe").setLevel(logging.INFO)
    options = DelivererOptions(
        poll_seconds=poll,
        batch_size=batch_size,
        concurrency=concurrency,
        priority_lane=None if priority_lane < 0 else priority_lane,
        priority_batch_size=priority_batch_size,
    )
    report = prefect_report() if events else None
    if sweeper is None:
        sweeper = bool(os.environ.get("PREFECT_API_URL"))
    elif sweeper and not os.environ.get("PREFECT_API_URL"):
        raise MailpipeError(
            "--sweeper needs a Prefect API: set PREFECT_API_URL (the one your deployments are "
            "registered on), or leave --sweeper out"
        )

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)  # the batch in hand finishes first

        async def announce() -> None:
            await ready.wait()
            err_console.print("mailpipe deliver: ready", highlight=False)

        announcing = asyncio.create_task(announce())
        sweeping = asyncio.create_task(hosted_sweeper(stop)) if sweeper else None
        try:
            stats = await run_deliverer(stop=stop, ready=ready, options=options, report=report)
        finally:
            announcing.cancel()
            stop.set()  # the deliverer may end on its own (an error): the sweeper goes too
            if sweeping is not None:
                await sweeping
        return stats.summary()

    summary = asyncio.run(main())
    err_console.print(
        f"mailpipe deliver: stopped after {summary['events']} event(s) "
        f"({summary['sent']} sent) in {summary['drains']} drain(s)",
        highlight=False,
    )
