"""The ``mailpipe`` command line: a thin layer over the ``mailpipe`` package."""

from __future__ import annotations

import logging

import typer

from mailpipe.cli import (
    adoption,
    check,
    db,
    deliver,
    demo,
    feedback,
    health,
    metrics,
    orchestration,
    providers,
    queue,
    report,
    run,
    snapshot,
    suppressions,
    templates,
)
from mailpipe.cli.output import OneLineErrors, state

app = typer.Typer(
    name="mailpipe",
    cls=OneLineErrors,
    help="Transactional email on PostgreSQL: queue, deliver, monitor and report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db")
app.add_typer(check.app, name="check")
app.add_typer(orchestration.setup_app, name="setup")
app.add_typer(orchestration.server_app, name="server")
app.command("serve")(orchestration.serve_command)
app.command("up")(orchestration.up_command)
app.command("demo")(demo.demo)
app.command("smtp-capture")(demo.smtp_capture)
app.add_typer(snapshot.app, name="snapshot")
app.command("report")(report.report_command)
app.add_typer(health.app, name="health")
app.command("metrics")(metrics.metrics_command)
app.add_typer(providers.app, name="provider")
app.add_typer(templates.app, name="template")
app.add_typer(queue.app, name="queue")
app.add_typer(suppressions.app, name="suppression")
app.add_typer(feedback.app, name="feedback")
app.command("run")(run.run_command)
app.command("deliver")(deliver.deliver_command)
app.command("enqueue")(run.enqueue_command)
adoption.register(app, db.app)


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
) -> None:
    """mailpipe: run ``mailpipe COMMAND --help`` for any command."""
    state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The pool warns on every failed connection attempt (two lines each) before the command
    # prints its one-line error: noise, unless debugging.
    logging.getLogger("psycopg.pool").setLevel(logging.DEBUG if debug else logging.ERROR)
