"""``mailpipe serve``, ``mailpipe up`` and ``mailpipe setup prefect``: running the deployments."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import typer

from mailpipe.cli.output import command, console, print_json, print_table, run
from mailpipe.config import get_settings
from mailpipe.deploy import kept, serve, setup, up
from mailpipe.deploy.database import PrefectDatabase
from mailpipe.deploy.server import prefect_home
from mailpipe.errors import ConfigError

setup_app = typer.Typer(help="Prepare services mailpipe runs on.", no_args_is_help=True)
server_app = typer.Typer(
    help="The local Prefect server `mailpipe run` starts and keeps when no Prefect API is "
    "configured (like the embedded Postgres).",
    no_args_is_help=True,
)


def _secret_source(prompt: bool) -> setup.SecretSource:
    """Values for Secret blocks: MAILPIPE_SECRET_<NAME>, else a hidden prompt on a terminal."""

    def source(block: str) -> str | None:
        value = setup.env_secret_source(block)
        if value or not (prompt and sys.stdin.isatty()):
            return value
        entered = typer.prompt(
            f"Password for Secret block {block!r} (empty: skip)",
            default="",
            show_default=False,
            hide_input=True,
        )
        return entered or None

    return source


def _print_steps(steps: list[setup.SetupStep]) -> None:
    print_table(
        [dataclasses.asdict(s) for s in steps],
        title="Prefect setup",
        columns=["kind", "name", "action", "detail"],
    )


@setup_app.command("prefect")
@command
def setup_prefect_command(
    pool_type: str = typer.Option(
        "process", "--pool-type", help="Type of the work pool when it has to be created."
    ),
    base_job_template: Path | None = typer.Option(
        None,
        "--base-job-template",
        exists=True,
        dir_okay=False,
        help="Job template JSON for the new pool (e.g. deployments/kubernetes/...).",
    ),
    prompt: bool = typer.Option(
        True, "--prompt/--no-prompt", help="Ask for missing SMTP passwords on a terminal."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the steps as JSON."),
) -> None:
    """Create or update what the deployments need on the Prefect API, idempotently.

    Secret blocks: the database URL (from DATABASE_URL) and each SMTP provider's password
    (providers whose credentials are {"secret_block": NAME}; the value comes from
    MAILPIPE_SECRET_<NAME> or a hidden prompt). The work pool of prefect.yaml. The variables
    mailpipe_timezone (MAILPIPE_TIMEZONE) and mailpipe_database_url_block. Secrets are never
    printed. Run it before `prefect deploy --all`, and again whenever a secret changes.
    """
    template = None
    if base_job_template is not None:
        try:
            template = json.loads(base_job_template.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{base_job_template} is not JSON: {exc}") from None
    steps = run(
        setup.setup_prefect(
            secret_source=_secret_source(prompt and not as_json),
            pool_type=pool_type,
            base_job_template=template,
        )
    )
    if as_json:
        print_json([dataclasses.asdict(s) for s in steps])
        return
    _print_steps(steps)
    if any(s.action == "missing" for s in steps):
        console.print(
            "[yellow]Some secrets are missing: runs that need them will fail "
            "until you run this again with them.[/]"
        )


@command
def serve_command(
    only: list[str] | None = typer.Option(
        None, "--only", help="Serve only this deployment (repeat for several)."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Most flow runs at once in this process."
    ),
    quality_worker: bool = typer.Option(
        True,
        "--quality-worker/--no-quality-worker",
        help="Start a `mailpipe check worker` for the flows' post-run checks.",
    ),
    deliverer: bool = typer.Option(
        True,
        "--deliverer/--no-deliverer",
        help="Start a `mailpipe deliver` that sends events as soon as they are due.",
    ),
    feedback_receiver: bool = typer.Option(
        True,
        "--feedback-receiver/--no-feedback-receiver",
        help="Start `mailpipe feedback serve`, the providers' webhook receiver "
        "(MAILPIPE_FEEDBACK_HOST:PORT, default 127.0.0.1:8025).",
    ),
) -> None:
    """Serve the deployments of prefect.yaml from this process (a single machine).

    Same names, cron schedules, parameters and concurrency limits as `prefect deploy --all`,
    without a work pool or worker. Needs a Prefect API (PREFECT_API_URL, or `prefect server
    start`). Stopping it (Ctrl-C, SIGTERM) leaves the schedules active, so a restart or a
    worker carries on.
    """
    console.print("Serving prefect.yaml's deployments; Ctrl-C stops (schedules stay active).")
    serve.serve_project(
        names=only or None,
        limit=limit,
        quality_worker=quality_worker,
        deliverer=deliverer,
        feedback_receiver=feedback_receiver,
    )


@command
def up_command(
    port: int = typer.Option(
        4200,
        "--port",
        help="Port of the local Prefect server; its UI and API are served there, and the UI "
        "is told to call the API on it.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the server listens on."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes to start."),
    quality_worker: bool = typer.Option(
        True,
        "--quality-worker/--no-quality-worker",
        help="Start a `mailpipe check worker` for the flows' post-run checks.",
    ),
    feedback_receiver: bool = typer.Option(
        True,
        "--feedback-receiver/--no-feedback-receiver",
        help="Start `mailpipe feedback serve`, the providers' webhook receiver "
        "(MAILPIPE_FEEDBACK_HOST/PORT, default 127.0.0.1:8025).",
    ),
    deliverer: bool = typer.Option(
        True,
        "--deliverer/--no-deliverer",
        help="Start a `mailpipe deliver` that sends events as soon as they are due.",
    ),
    prefect_db: PrefectDatabase = typer.Option(
        PrefectDatabase.AUTO,
        "--prefect-db",
        help="The local server's database: auto (a `prefect` database on the embedded "
        "Postgres when mailpipe uses it, else SQLite), postgres (a `prefect` database on "
        "DATABASE_URL's server too), or sqlite.",
    ),
) -> None:
    """The whole system on this machine: Prefect server, setup, deployments, a worker.

    Starts `prefect server start` on --host/--port (unless PREFECT_API_URL or the Prefect
    profile names a server), migrates the database, runs `mailpipe setup prefect`, `prefect
    deploy --all`, crashes runs a dead worker of this machine left Pending or Running (their
    concurrency slots are released), starts `prefect worker start --pool mailpipe`, the check
    worker and the feedback receiver (`mailpipe feedback serve`), then prints the UI address.
    Ctrl-C (or SIGTERM) stops it all within seconds; a run being submitted is let through
    first.
    """

    def ready(report: up.UpReport) -> None:
        where = (
            f"started in {report.server_seconds:.0f} s, log {report.server_log}"
            if report.started_server
            else "already running"
        )
        console.print(
            f"Prefect server: {report.api_url} ({where}, database: {report.server_database})"
        )
        for crashed in report.crashed:
            console.print(
                f"Crashed run {crashed.name} of {crashed.deployment}, left behind: "
                f"{crashed.reason}",
                highlight=False,
            )
        if report.migrations:
            console.print(f"Migrations applied: {', '.join(report.migrations)}")
        _print_steps(report.setup)
        console.print(f"Deployed: {', '.join(report.deployments)}")
        console.print(
            f"Workers: {report.workers} on pool mailpipe"
            + (", 1 data-quality worker" if report.quality_worker else "")
            + (", 1 deliverer" if report.deliverer else "")
        )
        if report.feedback_receiver:
            console.print(
                f"Feedback receiver: http://{report.feedback_receiver}/feedback/<provider> "
                "(behind your HTTPS proxy; docs/feedback.md)",
                highlight=False,
            )
        console.print(
            f"[bold]Prefect UI: {report.ui_url}[/]  (Ctrl-C stops everything)", highlight=False
        )

    console.print("Starting mailpipe (the Prefect server takes about 20 s)...")
    up.up(
        host=host,
        port=port,
        workers=workers,
        quality_worker=quality_worker,
        feedback_receiver=feedback_receiver,
        deliverer=deliverer,
        prefect_db=prefect_db,
        on_ready=ready,
        secret_source=_secret_source(True),
    )
    console.print("Stopped: workers and server are down; schedules stay registered.")


def _kept_home() -> Path:
    return prefect_home(get_settings(), name="local")


@server_app.command("status")
@command
def server_status_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Whether the kept local Prefect server runs, and where."""
    status = kept.kept_server_status(_kept_home())
    if as_json:
        print_json(status)
    elif status["running"]:
        console.print(
            f"running: {status['api_url']} (pid {status['pid']}, Prefect "
            f"{status['prefect_version']}, log {status['log']})",
            highlight=False,
        )
    else:
        console.print(f"not running (home {status['home']})", highlight=False)


@server_app.command("start")
@command
def server_start_command() -> None:
    """Start the kept local Prefect server now (`mailpipe run` starts it when needed)."""
    started = kept.ensure_kept_server(_kept_home())
    console.print(f"running: {started.api_url} (pid {started.pid})", highlight=False)


@server_app.command("stop")
@command
def server_stop_command() -> None:
    """Stop the kept local Prefect server (its runs' history stays for the next start)."""
    stopped = kept.stop_kept_server(_kept_home())
    console.print(
        f"stopped the Prefect server (pid {stopped.pid})" if stopped else "not running",
        highlight=False,
    )
