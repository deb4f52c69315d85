"""``mailpipe template``: add, update, list, show, render (preview) and remove email templates."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from mailpipe.cli.output import command, console, err_console, print_json, print_table, run
from mailpipe.cli.values import BadOption, json_object, text_or_file
from mailpipe.db import Database
from mailpipe.delivery import Preview, preview_message
from mailpipe.queue import typed_event_id
from mailpipe.templates import (
    add_template,
    get_template,
    list_templates,
    remove_template,
    template_versions,
    update_template,
)

app = typer.Typer(help="Email templates (Jinja2, sandboxed, versioned).", no_args_is_help=True)

_SUBJECT = typer.Option(None, "--subject", help="Subject template, e.g. 'Welcome {{ name }}'.")
_TEXT = typer.Option(None, "--text", help="Plain-text body template.")
_TEXT_FILE = typer.Option(None, "--text-file", help="Read the plain-text body from a file.")
_HTML = typer.Option(None, "--html", help="HTML body template (autoescaped).")
_HTML_FILE = typer.Option(None, "--html-file", help="Read the HTML body from a file.")
_FROM = typer.Option(
    None,
    "--from",
    help="From address for this template (else the provider's), e.g. 'Shop <shop@example.com>'.",
)
_JSON = typer.Option(False, "--json", help="Print JSON.")


@app.command("add")
@command
def add_command(
    key: str = typer.Argument(..., help="The template key events refer to (template_key)."),
    subject: str | None = _SUBJECT,
    text: str | None = _TEXT,
    text_file: Path | None = _TEXT_FILE,
    html: str | None = _HTML,
    html_file: Path | None = _HTML_FILE,
    from_address: str | None = _FROM,
) -> None:
    """Add a template (version 1). It is compiled first: a syntax error is refused."""
    text_body = text_or_file("--text", text, text_file)
    html_body = text_or_file("--html", html, html_file)
    if subject is None or text_body is None:
        raise BadOption("a template needs --subject and --text (or --text-file)")

    async def go() -> int:
        async with Database(min_size=1, max_size=2) as db:
            return await add_template(
                db,
                key,
                subject=subject,
                text_body=text_body,
                html_body=html_body,
                from_address=from_address,
            )

    version = run(go())
    console.print(f"added template [bold]{key}[/] v{version}", highlight=False)


@app.command("update")
@command
def update_command(
    key: str = typer.Argument(..., help="The template to change."),
    subject: str | None = _SUBJECT,
    text: str | None = _TEXT,
    text_file: Path | None = _TEXT_FILE,
    html: str | None = _HTML,
    html_file: Path | None = _HTML_FILE,
    no_html: bool = typer.Option(False, "--no-html", help="Remove the HTML body."),
    from_address: str | None = _FROM,
    no_from: bool = typer.Option(
        False, "--no-from", help="Remove the template's From (the provider's is used)."
    ),
) -> None:
    """Save a new version with the given parts changed; the previous version is kept."""
    text_body = text_or_file("--text", text, text_file)
    html_body = text_or_file("--html", html, html_file)
    changes: dict[str, Any] = {}
    if subject is not None:
        changes["subject"] = subject
    if text_body is not None:
        changes["text_body"] = text_body
    if no_html and html_body is not None:
        raise BadOption("give --html/--html-file or --no-html, not both")
    if html_body is not None or no_html:
        changes["html_body"] = html_body
    if no_from and from_address is not None:
        raise BadOption("give --from or --no-from, not both")
    if from_address is not None or no_from:
        changes["from_address"] = from_address
    if not changes:
        raise BadOption("nothing to change: pass --subject, --text, --html or --from")

    async def go() -> int:
        async with Database(min_size=1, max_size=2) as db:
            return await update_template(db, key, **changes)

    version = run(go())
    console.print(
        f"template [bold]{key}[/] is now v{version} (v{version - 1} kept)", highlight=False
    )


@app.command("list")
@command
def list_command(
    include_removed: bool = typer.Option(False, "--all", help="Include removed templates."),
    as_json: bool = _JSON,
) -> None:
    """Every template with its active version and subject."""

    async def go() -> list[dict[str, Any]]:
        async with Database(min_size=1, max_size=2) as db:
            return await list_templates(db, include_removed=include_removed)

    rows = run(go())
    if as_json:
        print_json(rows)
        return
    print_table(
        rows,
        title="Email templates",
        columns=[
            "template_key",
            "active_version",
            "versions",
            "subject",
            "from_address",
            "has_html",
            "updated_at",
        ],
    )


@app.command("show")
@command
def show_command(
    key: str = typer.Argument(..., help="The template."),
    version: int | None = typer.Option(
        None, "--version", help="A given version (default: the active one)."
    ),
    as_json: bool = _JSON,
) -> None:
    """A template's subject, bodies and from address, and its versions."""

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with Database(min_size=1, max_size=2) as db:
            return await get_template(db, key, version), await template_versions(db, key)

    row, versions = run(go())
    if as_json:
        print_json({**row, "versions": versions})
        return
    state = "active" if row["active"] else "inactive"
    created = f"{row['created_at']:%Y-%m-%d %H:%M}"
    console.print(f"[bold]{key}[/] v{row['version']} ({state}, {created})", highlight=False)
    console.print(
        f"From: {row['from_address'] or '(the provider default)'}", highlight=False, markup=False
    )
    console.print(f"Subject: {row['subject']}", highlight=False, markup=False)
    console.rule("text")
    console.print(row["text_body"], highlight=False, markup=False)
    if row["html_body"] is not None:
        console.rule("html")
        console.print(row["html_body"], highlight=False, markup=False)
    console.rule()
    print_table(
        versions,
        title="Versions",
        columns=["version", "active", "subject", "from_address", "created_at"],
    )


@app.command("render")
@command
def render_command(
    key: str | None = typer.Argument(None, help="The template (default: the event's)."),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Variables as a JSON object, e.g. "
        '\'{"name": "Ann"}\' (default: the event\'s payload).',
    ),
    to: str | None = typer.Option(
        None, "--to", help="Recipient (default: the event's, else recipient@example.com)."
    ),
    event: str | None = typer.Option(
        None,
        "--event",
        help="Preview this queued event (its id: a number or a UUID, as the database's ids): "
        "its recipient, payload, Message-ID and event header.",
    ),
    provider: str | None = typer.Option(
        None,
        "--provider",
        help="As sent through this provider (default: the one the flow would pick).",
    ),
    version: int | None = typer.Option(
        None, "--version", help="Render this version (default: the active one)."
    ),
    as_json: bool = _JSON,
) -> None:
    """Print the exact message the flow would send, without sending it.

    Headers and MIME bodies, raw (redirect to a file for an .eml); only the Date header will
    differ. Fails with the error the flow would
    record on the event (unknown template, missing variable, syntax error, bad address)."""
    variables = json_object("--data", data) if data is not None else None

    async def go() -> Preview:
        async with Database(min_size=1, max_size=2) as db:
            return await preview_message(
                db,
                key,
                variables,
                recipient=to,
                event_id=await typed_event_id(db, event) if event else None,
                provider_name=provider,
                version=version,
            )

    preview = run(go())
    if as_json:
        print_json(
            {
                "template_key": preview.template_key,
                "version": preview.version,
                "provider": preview.provider,
                "to": preview.recipient,
                "message_id": preview.message_id,
                "event": preview.event_id,
                "subject": preview.rendered.subject,
                "text": preview.rendered.text,
                "html": preview.rendered.html,
                "message": preview.message.decode("utf-8", errors="replace"),
            }
        )
        return
    via = (
        f"via provider {preview.provider}"
        if preview.provider
        else "no usable provider: the flow would defer it now"
    )
    err_console.print(
        f"# template {preview.template_key} v{preview.version}, {via}; only Date will differ",
        highlight=False,
        markup=False,
    )
    # The raw bytes, as handed to SMTP: redirect to a file to get an .eml.
    sys.stdout.flush()
    sys.stdout.buffer.write(preview.message)
    sys.stdout.buffer.flush()


@app.command("remove")
@command
def remove_command(
    key: str = typer.Argument(..., help="The template."),
    force: bool = typer.Option(
        False, "--force", help="Even if queued events use it (they will fail as unknown template)."
    ),
) -> None:
    """Retire a template: every version becomes inactive (kept for history)."""

    async def go() -> int:
        async with Database(min_size=1, max_size=2) as db:
            return await remove_template(db, key, force=force)

    waiting = run(go())
    console.print(
        f"removed template [bold]{key}[/]"
        + (f" ({waiting} queued event(s) will fail)" if waiting else ""),
        highlight=False,
    )
