"""``mailpipe suppression``: addresses and domains mail must not go to."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from mailpipe.cli.output import command, console, print_json, print_table, run
from mailpipe.cli.values import BadOption, moment
from mailpipe.db import Database
from mailpipe.suppressions import (
    REASONS,
    add_suppressions,
    list_suppressions,
    normalise_entry,
    remove_suppression,
)

app = typer.Typer(
    help="The suppression list: addresses and domains not to send to.", no_args_is_help=True
)


@app.command("add")
@command
def add_command(
    entries: list[str] = typer.Argument(
        ..., help="Addresses (user@example.com) or whole domains (example.com)."
    ),
    reason: str = typer.Option("manual", "--reason", help=f"One of {', '.join(REASONS)}."),
    expires: str | None = typer.Option(
        None, "--expires", help="Until when: a delay like 30d or an ISO time (default: forever)."
    ),
    source: str = typer.Option("mailpipe cli", "--source", help="Where this came from."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Suppress addresses or domains: mail to them is not sent.

    The event records why. An entry that already exists is kept as it is."""
    if reason not in REASONS:
        raise BadOption(f"--reason {reason!r} is not one of {', '.join(REASONS)}")
    until = moment("--expires", expires) if expires is not None else None
    if until is not None and until <= dt.datetime.now(dt.UTC):
        raise BadOption(f"--expires {expires!r} is in the past")
    normalised = [normalise_entry(e)[0] for e in entries]

    async def go() -> int:
        async with Database(min_size=1, max_size=2) as db:
            return await add_suppressions(
                db, normalised, reason=reason, source=source, expires_at=until
            )

    added = run(go())
    existing = len(set(normalised)) - added
    if as_json:
        print_json({"added": added, "already_suppressed": existing, "expires_at": until})
        return
    console.print(
        f"suppressed {added} new entr{'y' if added == 1 else 'ies'}"
        + (f" ({existing} already suppressed, kept as they were)" if existing else "")
        + (f" until {until:%Y-%m-%d %H:%M%z}" if until else ""),
        highlight=False,
    )


@app.command("remove")
@command
def remove_command(
    entry: str = typer.Argument(..., help="The address or domain."),
) -> None:
    """Lift a suppression: mail to the address or domain is sent again."""

    async def go() -> bool:
        async with Database(min_size=1, max_size=2) as db:
            return await remove_suppression(db, entry)

    if not run(go()):
        raise BadOption(f"{entry!r} is not suppressed: see `mailpipe suppression list`")
    console.print(f"removed {normalise_entry(entry)[0]} from the suppression list", highlight=False)


@app.command("list")
@command
def list_command(
    include_expired: bool = typer.Option(False, "--all", help="Include expired entries."),
    limit: int = typer.Option(1000, "--limit", help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Suppressed addresses and domains, newest first."""
    if limit < 1:
        raise BadOption("--limit must be at least 1")

    async def go() -> list[dict[str, Any]]:
        async with Database(min_size=1, max_size=2) as db:
            return await list_suppressions(db, include_expired=include_expired, limit=limit)

    rows = run(go())
    if as_json:
        print_json(rows)
        return
    print_table(
        [
            {
                "address": r["address"],
                "kind": r["kind"],
                "reason": r["reason"],
                "source": r["source"],
                "since": f"{r['created_at']:%Y-%m-%d %H:%M}",
                "expires": f"{r['expires_at']:%Y-%m-%d %H:%M}" if r["expires_at"] else "never",
            }
            for r in rows
        ],
        title="Suppressions",
    )
