"""``mailpipe provider``: add, change, list, show, suspend, resume and remove SMTP providers.

Seven commands of one group share their option declarations, so they stay in one module a
little over 400 lines: each command is short and reads on its own.
"""

from __future__ import annotations

import os
from typing import Any

import typer

from mailpipe.cli.output import (
    command,
    console,
    err_console,
    print_json,
    print_table,
    run,
    short_time,
)
from mailpipe.cli.values import BadOption, duration, optional_limit
from mailpipe.db import Database
from mailpipe.providers import (
    TLS_MODES,
    Provider,
    add_provider,
    credentials_reference,
    get_provider,
    load_providers,
    provider_activity_today,
    remove_provider,
    resume_provider,
    suspend_provider,
    update_provider,
)

app = typer.Typer(
    help="SMTP providers: where mail goes out, with credentials references.", no_args_is_help=True
)

MASK = "********"
PASSWORD_REFUSED = (
    "--password is refused: store it in a Secret block or env var and pass "
    "--secret-block/--password-env (mailpipe keeps only a reference to a password, never the "
    "password; e.g. `prefect block create secret`, then --secret-block smtp-password)"
)

_HOST = typer.Option(None, "--host", help="SMTP server hostname or IP.")
_PORT = typer.Option(None, "--port", help="Port: 587 STARTTLS, 465 implicit TLS, 25 relay.")
_TLS = typer.Option(None, "--tls", help=f"TLS mode: {', '.join(TLS_MODES)}.")
_USERNAME = typer.Option(None, "--username", help="SMTP AUTH user.")
_SECRET_BLOCK = typer.Option(
    None, "--secret-block", help="Password from this Prefect Secret block."
)
_PASSWORD_ENV = typer.Option(
    None, "--password-env", help="Password from this environment variable on the workers."
)
_PASSWORD = typer.Option(
    None,
    "--password",
    hidden=False,
    help="Refused: store the password in a Secret block or env var.",
)
_FROM = typer.Option(
    None,
    "--from",
    help="Default From, e.g. 'Shop <shop@example.com>' (a template's own from address wins).",
)
_PRIORITY = typer.Option(None, "--priority", help="Lower is tried first (failover order).")
_MINUTE = typer.Option(None, "--per-minute-limit", help="Sends per minute, or 'none'.")
_HOUR = typer.Option(None, "--per-hour-limit", help="Sends per hour, or 'none'.")
_DAY = typer.Option(None, "--per-day-limit", help="Sends per day, or 'none'.")
_MAX_CONN = typer.Option(
    None, "--max-connections", help="Persistent connections per worker (1-100)."
)
_TIMEOUT = typer.Option(None, "--timeout", help="SMTP timeout in seconds.")
_JSON = typer.Option(False, "--json", help="Print JSON.")


def provider_view(provider: Provider, activity: dict[str, int] | None = None) -> dict[str, Any]:
    """A provider as printed: every setting, the password masked, never resolved."""
    creds = provider.credentials or {}
    view: dict[str, Any] = {
        "name": provider.name,
        "host": provider.host,
        "port": provider.port,
        "tls_mode": provider.tls_mode,
        "username": provider.username,
        "password": MASK if creds else None,
        "credentials": provider.credential_reference(),
        "from_address": provider.from_address,
        "priority": provider.priority,
        "per_minute_limit": provider.per_minute_limit,
        "per_hour_limit": provider.per_hour_limit,
        "per_day_limit": provider.per_day_limit,
        "max_connections": provider.max_connections,
        "timeout_seconds": provider.timeout_seconds,
        "status": provider.status,
        "suspended_until": provider.suspended_until,
        "health_score": provider.health_score,
        "consecutive_failures": provider.consecutive_failures,
        "last_checked": provider.last_checked,
    }
    if "password_env" in creds:
        # Whether the variable is set here (where the CLI runs), never its value.
        view["credentials"] += (
            " (set here)" if os.environ.get(creds["password_env"]) else " (not set here)"
        )
    if activity is not None:
        view["sent_today"] = activity.get("sent", 0)
        view["failed_today"] = activity.get("failed", 0)
    return view


def _refuse_password(password: str | None) -> None:
    if password is not None:
        raise BadOption(PASSWORD_REFUSED)


@app.command("add")
@command
def add_command(
    name: str = typer.Argument(..., help="A unique name, e.g. sendgrid-eu."),
    host: str = typer.Option(..., "--host", help="SMTP server hostname or IP."),
    port: int = typer.Option(587, "--port", help="Port: 587 STARTTLS, 465 implicit TLS."),
    tls: str = typer.Option("starttls", "--tls", help=f"TLS mode: {', '.join(TLS_MODES)}."),
    username: str | None = _USERNAME,
    secret_block: str | None = _SECRET_BLOCK,
    password_env: str | None = _PASSWORD_ENV,
    password: str | None = _PASSWORD,
    from_address: str | None = _FROM,
    priority: int = typer.Option(100, "--priority", help="Lower is tried first."),
    per_minute_limit: str | None = _MINUTE,
    per_hour_limit: str | None = _HOUR,
    per_day_limit: str | None = _DAY,
    max_connections: int = typer.Option(4, "--max-connections", help="Connections (1-100)."),
    timeout: float = typer.Option(10.0, "--timeout", help="SMTP timeout in seconds."),
    probe: bool = typer.Option(
        False,
        "--probe",
        help="Open one SMTP session after adding (connect, TLS, AUTH, NOOP, QUIT) and report it.",
    ),
    as_json: bool = _JSON,
) -> None:
    """Add an SMTP provider (active at once).

    The password is never given here: say where it lives with --secret-block or
    --password-env. Exits 1 when --probe fails."""
    _refuse_password(password)
    credentials = credentials_reference(secret_block=secret_block, password_env=password_env)

    async def go() -> tuple[Provider, Any]:
        async with Database(min_size=1, max_size=2) as db:
            provider = await add_provider(
                db,
                name,
                host=host,
                port=port,
                tls_mode=tls,
                username=username,
                credentials=credentials,
                from_address=from_address,
                priority=priority,
                timeout_seconds=timeout,
                max_connections=max_connections,
                per_minute_limit=optional_limit("--per-minute-limit", per_minute_limit),
                per_hour_limit=optional_limit("--per-hour-limit", per_hour_limit),
                per_day_limit=optional_limit("--per-day-limit", per_day_limit),
            )
        result = None
        if probe:
            from mailpipe.monitoring import probe_provider

            result = await probe_provider(provider)
        return provider, result

    provider, result = run(go())
    view = provider_view(provider)
    if as_json:
        print_json(
            {
                **view,
                "probe": None
                if result is None
                else {
                    "result": result.result,
                    "latency_ms": round(result.latency_ms, 1),
                    "ip_address": result.ip_address,
                    "error": result.error,
                },
            }
        )
    else:
        console.print(
            f"added provider [bold]{provider.name}[/] "
            f"({provider.host}:{provider.port}, {provider.tls_mode}, "
            f"credentials: {view['credentials']})",
            highlight=False,
        )
        if result is not None and result.ok:
            console.print(
                f"[green]probe ok[/] in {result.latency_ms:.0f} ms ({result.ip_address})",
                highlight=False,
            )
    if result is not None and not result.ok:
        err_console.print(
            f"[bold red]error:[/] provider {provider.name!r} was added, but the "
            f"probe failed ({result.result}): {result.error}; fix it with "
            f"`mailpipe provider update {provider.name} ...`",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


@app.command("update")
@command
def update_command(
    name: str = typer.Argument(..., help="The provider to change."),
    host: str | None = _HOST,
    port: int | None = _PORT,
    tls: str | None = _TLS,
    username: str | None = _USERNAME,
    secret_block: str | None = _SECRET_BLOCK,
    password_env: str | None = _PASSWORD_ENV,
    password: str | None = _PASSWORD,
    no_credentials: bool = typer.Option(
        False, "--no-credentials", help="Remove the username and credentials (no AUTH)."
    ),
    from_address: str | None = _FROM,
    no_from: bool = typer.Option(False, "--no-from", help="Remove the default From."),
    priority: int | None = _PRIORITY,
    per_minute_limit: str | None = _MINUTE,
    per_hour_limit: str | None = _HOUR,
    per_day_limit: str | None = _DAY,
    max_connections: int | None = _MAX_CONN,
    timeout: float | None = _TIMEOUT,
    as_json: bool = _JSON,
) -> None:
    """Change some settings of a provider; the others keep their values."""
    _refuse_password(password)
    changes: dict[str, Any] = {}
    for key, value in (
        ("host", host),
        ("port", port),
        ("tls_mode", tls),
        ("username", username),
        ("from_address", from_address),
        ("priority", priority),
        ("max_connections", max_connections),
        ("timeout_seconds", timeout),
    ):
        if value is not None:
            changes[key] = value
    for key, option, value in (
        ("per_minute_limit", "--per-minute-limit", per_minute_limit),
        ("per_hour_limit", "--per-hour-limit", per_hour_limit),
        ("per_day_limit", "--per-day-limit", per_day_limit),
    ):
        if value is not None:
            changes[key] = optional_limit(option, value)
    if secret_block is not None or password_env is not None:
        changes["credentials"] = credentials_reference(
            secret_block=secret_block, password_env=password_env
        )
    if no_credentials:
        if "credentials" in changes or username is not None:
            raise BadOption(
                "--no-credentials cannot be combined with --username, "
                "--secret-block or --password-env"
            )
        changes.update(credentials=None, username=None)
    if no_from:
        if from_address is not None:
            raise BadOption("give --from or --no-from, not both")
        changes["from_address"] = None
    if not changes:
        raise BadOption("nothing to change: pass at least one setting (see --help)")

    async def go() -> Provider:
        async with Database(min_size=1, max_size=2) as db:
            return await update_provider(db, name, **changes)

    provider = run(go())
    if as_json:
        print_json(provider_view(provider))
        return
    console.print(
        f"updated provider [bold]{provider.name}[/]: {', '.join(sorted(changes))}", highlight=False
    )


@app.command("list")
@command
def list_command(as_json: bool = _JSON) -> None:
    """Every provider: status, health, suspension, last check, today's sent/failed counts."""

    async def go() -> tuple[list[Provider], dict[str, dict[str, int]]]:
        async with Database(min_size=1, max_size=2) as db:
            return await load_providers(db), await provider_activity_today(db)

    providers, activity = run(go())
    views = [provider_view(p, activity.get(p.name, {})) for p in providers]
    if as_json:
        print_json(views)
        return
    status_style = {
        "active": "[green]active[/]",
        "suspended": "[yellow]suspended[/]",
        "disabled": "[red]disabled[/]",
    }
    print_table(
        [
            {
                "name": v["name"],
                "endpoint": f"{v['host']}:{v['port']}",
                "tls": v["tls_mode"],
                "status": status_style.get(v["status"], v["status"]),
                "health": v["health_score"],
                "suspended until": short_time(v["suspended_until"]),
                "last check": short_time(v["last_checked"]),
                "sent today": v["sent_today"],
                "failed today": v["failed_today"],
                "prio": v["priority"],
            }
            for v in views
        ],
        title="SMTP providers (failover order)",
    )
    if not views:
        console.print("no provider yet: add one with `mailpipe provider add NAME --host ...`")


@app.command("show")
@command
def show_command(
    name: str = typer.Argument(..., help="The provider."), as_json: bool = _JSON
) -> None:
    """Every setting of one provider (the password is masked: only its reference is kept)."""

    async def go() -> tuple[Provider, dict[str, dict[str, int]]]:
        async with Database(min_size=1, max_size=2) as db:
            return await get_provider(db, name), await provider_activity_today(db)

    provider, activity = run(go())
    view = provider_view(provider, activity.get(provider.name, {}))
    if as_json:
        print_json(view)
        return
    print_table(
        [{"setting": k, "value": v} for k, v in view.items()], title=f"Provider {provider.name}"
    )


@app.command("suspend")
@command
def suspend_command(
    name: str = typer.Argument(..., help="The provider."),
    for_: str | None = typer.Option(
        None,
        "--for",
        help="Suspend for this long (e.g. 30m): the flow tries it again "
        "afterwards and a passing health probe may restore it. Without --for the provider "
        "is disabled until `mailpipe provider resume`.",
    ),
    as_json: bool = _JSON,
) -> None:
    """Stop sending through a provider (the others take over)."""
    length = duration("--for", for_) if for_ is not None else None

    async def go() -> Provider:
        async with Database(min_size=1, max_size=2) as db:
            return await suspend_provider(db, name, length)

    provider = run(go())
    if as_json:
        print_json(provider_view(provider))
    elif provider.status == "disabled":
        console.print(
            f"provider [bold]{name}[/] disabled until `mailpipe provider resume {name}`",
            highlight=False,
        )
    else:
        console.print(
            f"provider [bold]{name}[/] suspended until "
            f"{provider.suspended_until:%Y-%m-%d %H:%M:%S%z}",
            highlight=False,
        )


@app.command("resume")
@command
def resume_command(
    name: str = typer.Argument(..., help="The provider."), as_json: bool = _JSON
) -> None:
    """Make a suspended or disabled provider active again now."""

    async def go() -> Provider:
        async with Database(min_size=1, max_size=2) as db:
            return await resume_provider(db, name)

    provider = run(go())
    if as_json:
        print_json(provider_view(provider))
    else:
        console.print(f"provider [bold]{name}[/] active", highlight=False)


@app.command("remove")
@command
def remove_command(
    name: str = typer.Argument(..., help="The provider."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a provider. Its audit history keeps its name; queued mail uses the others."""

    async def check() -> Provider:
        async with Database(min_size=1, max_size=2) as db:
            return await get_provider(db, name)

    run(check())
    if not yes and not typer.confirm(f"Remove provider {name!r}?"):
        raise typer.Exit(1)

    async def go() -> None:
        async with Database(min_size=1, max_size=2) as db:
            await remove_provider(db, name)

    run(go())
    console.print(f"removed provider [bold]{name}[/]", highlight=False)
