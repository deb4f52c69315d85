"""``mailpipe db``: migrate, status, verify, url, stop."""

from __future__ import annotations

import typer

from mailpipe.cli.output import command, console, print_json, print_table, run
from mailpipe.config import get_settings
from mailpipe.db import Database, database_url, redact_url
from mailpipe.migrations import migrate, migration_status
from mailpipe.verification import verify_schema

app = typer.Typer(help="The database: migrations, checks and where it is.", no_args_is_help=True)


@app.command("migrate")
@command
def migrate_command(
    target: str | None = typer.Option(None, help="Stop after this migration (its name)."),
) -> None:
    """Apply pending migrations from sql/migrations, in order."""

    async def go() -> list[str]:
        async with Database(min_size=1, max_size=2) as db:
            return await migrate(db, target=target)

    applied = run(go())
    if applied:
        for name in applied:
            console.print(f"[green]applied[/] {name}")
    else:
        console.print("already up to date")


@app.command("status")
@command
def status_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Applied and pending migrations."""

    async def go():
        async with Database(min_size=1, max_size=2) as db:
            return await migration_status(db)

    statuses = run(go())
    rows = [{"migration": s.name, "state": s.state, "applied_at": s.applied_at} for s in statuses]
    if as_json:
        print_json(rows)
        return
    print_table(rows, title="Migrations")
    pending = sum(s.state == "pending" for s in statuses)
    edited = [s.name for s in statuses if s.state == "edited"]
    if edited:
        console.print(f"[red]edited after being applied:[/] {', '.join(edited)}")
        raise typer.Exit(1)
    console.print(f"{pending} pending" if pending else "up to date")


@app.command("verify")
@command
def verify_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Run the SMTP-hardening test plan's verification queries and judge each."""

    async def go():
        async with Database(min_size=1, max_size=2) as db:
            return await verify_schema(db)

    checks = run(go())
    if as_json:
        print_json(
            [{"check": c.name, "ok": c.ok, "problem": c.problem, "rows": c.rows} for c in checks]
        )
    else:
        for check in checks:
            print_table(check.rows, title=f"{check.description} ({check.name})")
        print_table(
            [
                {
                    "check": c.name,
                    "result": "[green]ok[/]" if c.ok else f"[red]FAILED[/] {c.problem}",
                }
                for c in checks
            ],
            title="Verification",
        )
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@app.command("url")
@command
def url_command(
    show_password: bool = typer.Option(False, help="Print the password too (for scripts)."),
) -> None:
    """Print the database URL mailpipe uses (starting the embedded Postgres if needed)."""
    url = database_url()
    typer.echo(url if show_password else redact_url(url))


@app.command("stop")
@command
def stop_command() -> None:
    """Stop the embedded Postgres (no effect when DATABASE_URL is set)."""
    from mailpipe.embedded import stop_embedded_postgres

    settings = get_settings()
    if settings.database_url is not None:
        console.print("DATABASE_URL is set: no embedded Postgres to stop")
        return
    stopped = stop_embedded_postgres(settings.pgdata)
    console.print("stopped" if stopped else "not running")
