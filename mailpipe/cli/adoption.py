"""``mailpipe db preflight``, ``mailpipe db adopt`` and ``mailpipe cutover``: adopting the app's
existing database."""

from __future__ import annotations

from dataclasses import asdict

import typer

from mailpipe.adoption import SEED_JOBS
from mailpipe.adoption.adopt import AdoptionResult, adopt, rollback_adoption
from mailpipe.adoption.cutover import CutoverReport, DrainState, StepResult
from mailpipe.adoption.cutover import cutover as run_cutover
from mailpipe.adoption.cutover import finalize as run_finalize
from mailpipe.adoption.cutover import rollback as run_rollback
from mailpipe.adoption.preflight import PreflightReport, preflight
from mailpipe.adoption.secrets import (
    SecretsResult,
    adopt_provider_secrets,
    finalize_provider_secrets,
)
from mailpipe.cli import providers as providers_cli
from mailpipe.cli.output import command, console, print_json, print_table, run
from mailpipe.cli.values import BadOption
from mailpipe.db import Database
from mailpipe.serialization import to_jsonable


def register(app: typer.Typer, db_app: typer.Typer) -> None:
    """Add the commands to the ``mailpipe`` app and its ``db`` group."""
    db_app.command("preflight")(preflight_command)
    db_app.command("adopt")(adopt_command)
    providers_cli.app.command("adopt")(provider_adopt_command)
    app.command("cutover")(cutover_command)


def _size(value: int | None) -> str | None:
    if value is None:
        return None
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return None


def _print_report(report: PreflightReport) -> None:
    conn = report.connection
    console.print(
        f"database [bold]{conn['database']}[/] (schema {conn['schema']}, role {conn['role']}, "
        f"Postgres {conn['server_version']}): [bold]{report.shape}[/]"
    )
    console.print(f"connection: [bold]{conn['mode']}[/] ({conn['evidence']})")
    print_table(
        [
            {
                "table": t.name,
                "shape": t.shape,
                "id": t.id_type,
                "rows (est.)": t.estimated_rows,
                "size": _size(t.total_bytes),
                "RLS": t.rls_enabled,
            }
            for t in report.tables
        ],
        title="Tables",
    )
    if report.statuses:
        unknown = report.unknown_statuses
        print_table(
            [
                {"status": s, "events": n, "known to mailpipe": s not in unknown}
                for s, n in report.statuses.items()
            ],
            title=f"Statuses in use ({report.status_type})",
        )
    secrets = report.plaintext_secrets
    if secrets.get("providers"):
        console.print(
            f"plaintext secrets: {secrets['providers']} providers "
            f"({', '.join(secrets['provider_names'])}) in {', '.join(secrets['columns'])} "
            "(values not shown)"
        )
    if report.cron.get("installed"):
        print_table(
            [
                {
                    "job": j["job_name"],
                    "schedule": j["schedule"],
                    "active": j["active"],
                    "seed job": j["seed_job"],
                    "calls": j["http_host"] or ("http" if j["calls_http"] else "sql"),
                    "key in clear": j["inline_bearer_token"],
                    "running": j["running"],
                    "last run": j["last_status"],
                }
                for j in report.cron["jobs"]
            ],
            title=f"pg_cron {report.cron['version']} jobs",
        )
    else:
        console.print("pg_cron: not installed in this database")
    if report.net_queue is not None:
        console.print(f"net.http_request_queue: {report.net_queue} calls queued")
    if report.event_writers:
        print_table(
            [
                {
                    "function": w["function"],
                    "sets template_key": w["sets_template_key"],
                    "sets template_id": w["sets_template_id"],
                    "called by": ", ".join(w["triggers"]) or "-",
                }
                for w in report.event_writers
            ],
            title="Functions that insert into communication_events",
        )
    if report.event_triggers:
        print_table(
            [
                {
                    "trigger": t["trigger_name"],
                    "function": t["function"],
                    "notifies": t["notifies"],
                    "inserts elsewhere": t["inserts"],
                }
                for t in report.event_triggers
            ],
            title="Triggers on communication_events",
        )
    if report.steps:
        print_table(
            [
                {
                    "table": s.table,
                    "step": s.action,
                    "lock": s.lock,
                    "rewrites": s.rewrites,
                    "implemented": s.implemented,
                }
                for s in report.steps
            ],
            title="Adoption steps",
        )
    for finding in report.findings:
        console.print(
            f"[yellow]note[/] {finding.code}: {finding.message}", highlight=False, soft_wrap=True
        )
    if report.blockers:
        print_table(
            [
                {"blocker": b.code, "problem": b.message, "what to do": b.action, "by": b.fixed_by}
                for b in report.blockers
            ],
            title="Blockers",
        )
        console.print(f"[bold red]NO-GO[/]: {len(report.blockers)} blockers")
    else:
        console.print("[bold green]GO[/]: nothing blocks adoption")


@command
def preflight_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Inspect the database read-only: what adopting it would do and what blocks it.

    Safe on production (one READ ONLY transaction, short lock and statement timeouts); secrets
    are never printed. Exit code 0: go; 1: no-go, with the blockers and what to do for each.
    """

    async def go() -> PreflightReport:
        async with Database(min_size=1, max_size=1, application_name="mailpipe-preflight") as db:
            return await preflight(db)

    report = run(go())
    if as_json:
        print_json(to_jsonable(report.to_dict()))
    else:
        _print_report(report)
    if not report.go:
        raise typer.Exit(1)


@command
def adopt_command(
    lock_timeout: str = typer.Option(
        "5s",
        "--lock-timeout",
        help="How long one statement may wait for a table lock (the app's writes queue behind "
        "a waiting ALTER). On timeout adoption stops; run it again to go on.",
    ),
    rollback: bool = typer.Option(
        False,
        "--rollback",
        help="Take back what adoption added (after stopping mailpipe and `cutover --rollback`).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Adopt the app's database: add what mailpipe needs, additively, then apply migrations.

    Only the app's shape (before or after the seed's hardening, see `mailpipe db preflight`)
    is accepted; anything else is refused with nothing changed. Safe to re-run: an adopted,
    up-to-date database is left as it is.
    """

    if rollback:

        async def back() -> None:
            async with Database(min_size=1, max_size=2, application_name="mailpipe-adopt") as db:
                await rollback_adoption(db, lock_timeout=lock_timeout)

        run(back())
        console.print("adoption rolled back: the app's schema is as it was before `db adopt`")
        return

    async def go() -> AdoptionResult:
        async with Database(min_size=1, max_size=2, application_name="mailpipe-adopt") as db:
            return await adopt(db, lock_timeout=lock_timeout)

    result = run(go())
    if as_json:
        print_json(to_jsonable(asdict(result)))
        return
    for name in result.adoption_applied:
        console.print(f"[green]adopted[/] {name}", highlight=False)
    for name in result.baselined:
        console.print(f"[blue]baselined[/] {name} (its effect came with adoption)", highlight=False)
    for name in result.migrations_applied:
        console.print(f"[green]applied[/] {name}", highlight=False)
    if not result.changed:
        console.print("already adopted and up to date")
    else:
        console.print(f"done in {result.seconds:.1f} s: `mailpipe db preflight` should say GO")


@command
def provider_adopt_command(
    password_env: list[str] | None = typer.Option(
        None,
        "--password-env",
        help="PROVIDER=VAR: this provider's password is already in env var VAR on the workers "
        "(checked to match, never printed). Repeatable; other providers go to Secret blocks.",
    ),
    block_prefix: str = typer.Option(
        "smtp-", "--block-prefix", help="Secret blocks are named <prefix><provider>."
    ),
    finalize: bool = typer.Option(
        False,
        "--finalize",
        help="After `mailpipe cutover --finalize`: clear password_encrypted and add the "
        "references-only CHECKs (refused while any plaintext remains).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Move the app's plaintext SMTP passwords out of the database, keeping references.

    Each password goes to a Prefect Secret block (or an env var you name is checked to hold
    it); credentials then hold {"secret_block": ...} or {"password_env": ...}. The app's
    password_encrypted stays until --finalize: its edge functions read it while the old
    pipeline may still run.
    """
    mapping: dict[str, str] = {}
    for item in password_env or []:
        provider, sep, variable = item.partition("=")
        if not sep or not provider or not variable:
            raise BadOption(f"--password-env {item!r}: write PROVIDER=VAR, e.g. primary=SMTP_PASS")
        mapping[provider] = variable

    async def go() -> SecretsResult:
        async with Database(min_size=1, max_size=2, application_name="mailpipe-adopt") as db:
            if finalize:
                return await finalize_provider_secrets(db)
            return await adopt_provider_secrets(db, password_env=mapping, block_prefix=block_prefix)

    result = run(go())
    if as_json:
        print_json(to_jsonable(asdict(result)))
        return
    for moved in result.moved:
        console.print(f"[green]{moved.provider}[/]: {moved.action}", highlight=False)
        if moved.note:
            console.print(f"  [yellow]{moved.note}[/]", highlight=False)
    for name in result.cleared:
        console.print(f"[green]{name}[/]: password_encrypted cleared", highlight=False)
    if result.finalized:
        console.print("references-only CHECKs in place: no password is stored in the database")
    elif not result.moved:
        console.print("no plaintext password left to move")


def _print_step(step: StepResult) -> None:
    colour = {"done": "green", "already": "blue", "skipped": "yellow", "warning": "red"}.get(
        step.outcome, "white"
    )
    console.print(
        f"[{colour}]{step.outcome:>7}[/] {step.step}: {step.detail}",
        highlight=False,
        soft_wrap=True,
    )


async def _print_progress(state: DrainState) -> None:
    if not state.quiet:
        console.print(f"waiting ({state.elapsed:.0f} s): {state.describe()}", highlight=False)


@command
def cutover_command(
    finalize: bool = typer.Option(
        False, "--finalize", help="Also unschedule the jobs (once mailpipe delivers)."
    ),
    rollback: bool = typer.Option(
        False, "--rollback", help="Re-activate the paused jobs (stop mailpipe's deployments first)."
    ),
    jobs: list[str] = typer.Option(
        list(SEED_JOBS),
        "--job",
        help="A pg_cron job to hand over (repeat; default: the seed's four).",
    ),
    timeout: float = typer.Option(
        300.0, min=0, help="Seconds to wait for the old pipeline to drain."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Hand the pg_cron jobs over to mailpipe: pause them, wait until what they started has
    finished, report the hand-over. Safe to re-run: each step does only what is left."""
    if finalize and rollback:
        raise typer.BadParameter("--finalize and --rollback exclude each other")
    on_step = None if as_json else _print_step
    on_progress = None if as_json else _print_progress

    async def go() -> CutoverReport:
        async with Database(min_size=1, max_size=2, application_name="mailpipe-cutover") as db:
            if rollback:
                return await run_rollback(db, jobs=jobs, on_step=on_step)
            action = run_finalize if finalize else run_cutover
            return await action(
                db, jobs=jobs, timeout=timeout, on_step=on_step, on_progress=on_progress
            )

    report = run(go())
    if as_json:
        print_json(
            to_jsonable(
                {
                    "action": report.action,
                    "handed_over": report.handed_over,
                    "steps": [asdict(s) for s in report.steps],
                    "jobs": report.jobs,
                }
            )
        )
