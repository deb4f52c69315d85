"""The ``mailpipe`` command line: a thin layer over the ``mailpipe`` package."""

from __future__ import annotations

import logging

import typer

from mailpipe.cli import db
from mailpipe.cli.output import state

app = typer.Typer(
    name="mailpipe",
    help="Transactional email on PostgreSQL: queue, deliver, monitor and report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db")


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
