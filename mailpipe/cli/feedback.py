"""``mailpipe feedback``: receive, import, apply and inspect provider feedback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mailpipe.cli.output import command, console, print_json, print_table, run, short_time
from mailpipe.cli.values import BadOption
from mailpipe.db import Database
from mailpipe.feedback.vocabulary import FeedbackState, mask_address

app = typer.Typer(
    help="The feedback loop: deliveries, bounces and complaints providers report.",
    no_args_is_help=True,
)


@app.command("serve")
@command
def serve_command(
    host: str | None = typer.Option(
        None, "--host", help="Address to bind (default MAILPIPE_FEEDBACK_HOST, 127.0.0.1)."
    ),
    port: int | None = typer.Option(
        None, "--port", help="Port (default MAILPIPE_FEEDBACK_PORT, 8025)."
    ),
    workers: int = typer.Option(1, "--workers", help="Processes sharing the port (one core each)."),
) -> None:
    """Run the webhook receiver: POST /feedback/{ses,sendgrid,postmark,mailgun,resend,generic}.

    Put it behind your HTTPS reverse proxy; events are stored in the inbox and applied by
    `mailpipe feedback apply` (or the process_email_feedback flow)."""
    from mailpipe.feedback.receiver import serve

    if port is not None and not 0 <= port <= 65535:
        raise BadOption(f"--port {port} is not a TCP port")
    if workers < 1:
        raise BadOption("--workers must be at least 1")
    serve(host, port, workers=workers)


@app.command("import")
@command
def import_command(
    paths: list[Path] = typer.Argument(
        ..., help="Bounce or complaint messages (.eml files) or Maildir folders."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Store DSN bounces (RFC 3464) and ARF complaints (RFC 5965) from files or Maildirs.

    A Maildir's new messages are moved to cur/ once stored. Apply them with
    `mailpipe feedback apply`."""
    from mailpipe.feedback.dsn import ImportResult, import_files, import_maildir
    from mailpipe.feedback.settings import get_feedback_settings

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise BadOption(f"no such file or folder: {', '.join(missing)}")
    prefix = get_feedback_settings().verp_prefix

    async def go() -> ImportResult:
        total = ImportResult()
        async with Database(min_size=1, max_size=2) as db:
            files = [p for p in paths if p.is_file()]
            parts = [await import_files(db, files, verp_prefix=prefix)] if files else []
            for folder in (p for p in paths if p.is_dir()):
                parts.append(await import_maildir(db, folder, verp_prefix=prefix))
        for part in parts:
            total.add(part)
        return total

    result = run(go())
    if as_json:
        print_json(vars(result))
        return
    console.print(result.describe(), highlight=False)


@app.command("imap")
@command
def imap_command(
    host: str | None = typer.Option(
        None, "--host", help="IMAP server (default MAILPIPE_FEEDBACK_IMAP_HOST)."
    ),
    port: int | None = typer.Option(
        None, "--port", help="Port (default MAILPIPE_FEEDBACK_IMAP_PORT, else 993 or 143)."
    ),
    security: str | None = typer.Option(
        None,
        "--security",
        help="tls, starttls, or plain (loopback only); default MAILPIPE_FEEDBACK_IMAP_SECURITY, "
        "tls.",
    ),
    user: str | None = typer.Option(
        None, "--user", help="Login (default MAILPIPE_FEEDBACK_IMAP_USERNAME)."
    ),
    folder: str | None = typer.Option(
        None, "--folder", help="Folder to read (default MAILPIPE_FEEDBACK_IMAP_FOLDER, INBOX)."
    ),
    after: str | None = typer.Option(
        None,
        "--after",
        help="Once stored: seen (flag \\Seen), move (to --move-to) or delete; default "
        "MAILPIPE_FEEDBACK_IMAP_AFTER, seen.",
    ),
    move_to: str | None = typer.Option(None, "--move-to", help="Folder for --after move."),
    ca_file: Path | None = typer.Option(
        None, "--ca-file", help="CA bundle of a server with a private CA."
    ),
    limit: int | None = typer.Option(None, "--limit", help="At most this many messages."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Store the unseen bounces and complaints of an IMAP folder, then flag them \\Seen.

    Messages are flagged (or moved, or deleted: --after) only once stored, so a crash loses
    nothing and a second read stores nothing twice. The password comes from
    MAILPIPE_FEEDBACK_IMAP_PASSWORD or the Secret block MAILPIPE_FEEDBACK_IMAP_PASSWORD_BLOCK.
    Apply them with `mailpipe feedback apply`."""
    from mailpipe.feedback.dsn import ImportResult
    from mailpipe.feedback.imap import ImapMailbox, import_imap
    from mailpipe.feedback.settings import get_feedback_settings

    if security is not None and security not in ("tls", "starttls", "plain"):
        raise BadOption(f"--security {security!r} is not tls, starttls or plain")
    if after is not None and after not in ("seen", "move", "delete"):
        raise BadOption(f"--after {after!r} is not seen, move or delete")
    if port is not None and not 1 <= port <= 65535:
        raise BadOption(f"--port {port} is not a TCP port")
    if limit is not None and limit < 1:
        raise BadOption("--limit must be at least 1")
    if ca_file is not None and not ca_file.is_file():
        raise BadOption(f"--ca-file {ca_file}: no such file")
    settings = get_feedback_settings()

    async def go() -> ImportResult:
        box = await ImapMailbox.from_settings(
            settings,
            host=host,
            port=port,
            security=security,
            username=user,
            folder=folder,
            after=after,
            move_to=move_to,
            ca_file=ca_file,
        )
        async with Database(min_size=1, max_size=2) as db:
            return await import_imap(db, box, verp_prefix=settings.verp_prefix, limit=limit)

    result = run(go())
    if as_json:
        print_json(vars(result))
        return
    console.print(result.describe(), highlight=False)


@app.command("apply")
@command
def apply_command(
    batch_size: int = typer.Option(1000, "--batch-size", help="Events per transaction."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Apply the inbox once: confirmation statuses, suppressions, attempt history."""
    from mailpipe.feedback.apply import FeedbackResult, apply_feedback

    if batch_size < 1:
        raise BadOption("--batch-size must be at least 1")

    async def go() -> FeedbackResult:
        async with Database(min_size=1, max_size=2) as db:
            return await apply_feedback(db, batch_size=batch_size)

    result = run(go())
    if as_json:
        print_json(result.as_dict())
        return
    console.print(
        f"applied {result.applied}, unmatched {result.unmatched}, errors {result.errors}: "
        f"{result.status_changes} status change(s), {result.suppressions} suppression(s), "
        f"{result.attempts} attempt row(s)",
        highlight=False,
    )


@app.command("list")
@command
def list_command(
    states: list[str] | None = typer.Option(
        None, "--state", help=f"Only these states: {', '.join(FeedbackState)} (repeatable)."
    ),
    limit: int = typer.Option(50, "--limit", help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Inbox events, newest first (recipients masked in the table; --json gives every field:
    matched event, confirmation, provider ids, effects and errors)."""
    from mailpipe.feedback.inbox import list_events

    wrong = [s for s in states or [] if s not in {v.value for v in FeedbackState}]
    if wrong:
        raise BadOption(f"--state {wrong[0]!r} is not one of {', '.join(FeedbackState)}")
    if limit < 1:
        raise BadOption("--limit must be at least 1")

    async def go() -> list[dict[str, Any]]:
        async with Database(min_size=1, max_size=2) as db:
            return await list_events(db, states=states or None, limit=limit)

    rows = run(go())
    if as_json:
        print_json(rows)
        return
    print_table(
        [
            {
                "id": r["id"],
                "received": short_time(r["received_at"]),
                "provider": r["provider"],
                "kind": r["kind"] or r["provider_kind"],
                "state": r["state"],
                "recipient": mask_address(r["recipient"]),
                # What applying it did, or why it was not applied.
                "result": r["error"] or ", ".join(r["effect"]) or None,
            }
            for r in rows
        ],
        title="Feedback inbox",
    )
