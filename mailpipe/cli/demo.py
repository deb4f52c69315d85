"""``mailpipe demo`` and ``mailpipe smtp-capture``: the pipeline with nothing configured."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import typer

from mailpipe.cli.output import command, console, print_table, run
from mailpipe.cli.run import (
    FLOWS,
    console_logs_without_tracebacks,
    kept_prefect_api,
    load_flow,
    prefect_api,
    run_flow,
)
from mailpipe.config import get_settings
from mailpipe.db import Database, redact_url


@command
def smtp_capture(
    port: int = typer.Option(2525, min=1, max=65535, help="Port to listen on (127.0.0.1)."),
    maildir: Path | None = typer.Option(
        None, help="Maildir to write to [default: <data dir>/maildir]."
    ),
) -> None:
    """Run a local SMTP server that files every message in a Maildir (until Ctrl-C)."""
    from mailpipe.capture import CaptureServer

    folder = maildir or get_settings().data_dir / "maildir"
    try:
        server = CaptureServer(folder, port=port).start()
    except OSError as exc:
        raise typer.Exit(_port_error(port, exc)) from None
    console.print(
        f"capturing SMTP on [bold]127.0.0.1:{server.port}[/] into {folder.resolve()}"
        " (Ctrl-C to stop)"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        console.print(f"captured {server.count} messages")


async def _run_flows() -> dict[str, dict]:
    """The five flows once each, in the order a day of operation would run them, through the
    same path as ``mailpipe run`` (Prefect's flow engine, the kept local Prefect server)."""
    import datetime as dt

    today = dt.datetime.now(dt.UTC).date()
    steps = [
        ("process_email_queue", {}, "running process_email_queue"),
        ("process_email_feedback", {}, "running process_email_feedback"),
        ("monitor_smtp_health", {}, "running monitor_smtp_health"),
        ("monitor_email_production", {}, "running monitor_email_production"),
        (
            "snapshot_email_health",
            {"start": today, "end": today},
            "running snapshot_email_health (today, so the demo's traffic shows)",
        ),
    ]
    summaries: dict[str, dict] = {}
    for name, params, label in steps:
        with console.status(label):
            summaries[name] = await run_flow(name, params)
    return summaries


def _port_error(port: int, exc: OSError) -> int:
    console.print(
        f"[red]error:[/] cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another --port"
    )
    return 1


@command
def demo(
    events: int = typer.Option(300, min=1, max=100_000, help="Sample events to enqueue."),
) -> None:
    """Run the pipeline end to end on the embedded defaults and show what happened.

    Starts the embedded Postgres (unless DATABASE_URL is set) and a local SMTP capture server,
    migrates, seeds a provider, templates and sample events (some invalid, some scheduled later,
    several priorities), runs the five flows once each and prints their summaries.
    """
    from mailpipe.capture import CaptureServer
    from mailpipe.demo import seed_demo

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    settings = get_settings()
    maildir = settings.data_dir / "maildir"
    with console.status("starting Postgres and the SMTP capture server"):
        db = Database(min_size=1, max_size=4)
    console.print(f"database: {redact_url(db.url)}")
    with CaptureServer(maildir) as capture:
        console.print(f"SMTP capture server: 127.0.0.1:{capture.port} -> {maildir.resolve()}")

        async def prepare():
            async with db:
                return await seed_demo(
                    db,
                    smtp_host=capture.host,
                    smtp_port=capture.port,
                    maildir=maildir,
                    events=events,
                )

        setup = run(prepare())
        console.print(
            f"enqueued {setup.events} events: {setup.invalid} with an invalid address, "
            f"{setup.scheduled_later} scheduled later, {setup.suppressed} to a suppressed "
            f"address, {setup.template_errors} with a missing template variable"
        )
        local_api = kept_prefect_api()  # the kept server boots while the flows are imported
        for name in FLOWS:
            load_flow(name)
        with prefect_api(local_api() if local_api else None), console_logs_without_tracebacks():
            summaries = asyncio.run(_run_flows())
        summary = summaries["process_email_queue"]
        print_table(
            [
                {"outcome": k, "events": summary[k]}
                for k in ("sent", "retry", "failed", "deferred", "suppressed", "rescued")
            ],
            title="process_email_queue",
        )
        captured = capture.count
    health = summaries["monitor_smtp_health"]
    console.print(
        f"monitor_smtp_health: {health['probed']} provider(s) probed, "
        f"{health['ok']} ok, {health['failed']} failed"
    )
    production = summaries["monitor_email_production"]
    console.print(
        f"monitor_email_production: alerts firing: "
        f"{', '.join(production.get('firing', [])) or 'none'}; queue "
        + ", ".join(f"{k} {v}" for k, v in production.get("queue", {}).items())
    )
    feedback = summaries["process_email_feedback"]
    console.print(
        f"process_email_feedback: {feedback['applied']} provider reports applied, "
        f"{feedback['backlog']['due']} waiting (the capture server reports no bounces; "
        "`mailpipe feedback serve` receives real ones)"
    )
    snapshot = summaries["snapshot_email_health"]
    console.print(
        f"snapshot_email_health: {snapshot['rows']} rows for {snapshot['start']} "
        f"({snapshot['timezone']}); `mailpipe report` renders them as HTML"
    )

    async def report():
        async with Database(db.url, min_size=1, max_size=1) as again:
            return await again.fetch_all(
                "SELECT status, coalesce(error_class, '-') AS reason, count(*) AS events"
                " FROM communication_events GROUP BY 1, 2 ORDER BY 1, 2"
            )

    print_table(run(report()), title="communication_events by status")
    console.print(
        f"[green]{captured} emails captured[/] in {maildir.resolve()}/new "
        "(one file per message; any mail client opens a Maildir)"
    )
    console.print(
        "next: `mailpipe up` runs the five flows on their schedules with the "
        "Prefect UI; `mailpipe --help` lists every command"
    )
