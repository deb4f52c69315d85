"""``mailpipe queue``: status, list, show, retry, cancel and purge events, safely while flows
run.

A little over 400 lines: six commands of one group, each mostly its options and its output
(``show`` adds an event's feedback history); the work is in :mod:`mailpipe.queue` and
:mod:`mailpipe.feedback.lookup`.
"""

from __future__ import annotations

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
from mailpipe.cli.values import BadOption, duration
from mailpipe.db import Database
from mailpipe.feedback.lookup import EventFeedback, event_feedback, latest_feedback
from mailpipe.queue import (
    FINAL_STATUSES,
    RETRYABLE_STATUSES,
    STATUSES,
    AdminResult,
    PurgeResult,
    QueueStatus,
    cancel_events,
    count_purgeable,
    list_events,
    purge_events,
    queue_status,
    retry_events,
    typed_event_ids,
)

app = typer.Typer(
    help="The outbox: what is queued, what failed; retry, cancel, purge.", no_args_is_help=True
)

_JSON = typer.Option(False, "--json", help="Print JSON.")


def _statuses(option: str, values: list[str] | None, allowed: tuple[str, ...]) -> list[str]:
    for value in values or []:
        if value not in allowed:
            raise BadOption(f"{option} {value!r} is not one of {', '.join(allowed)}")
    return list(values or [])


@app.command("status")
@command
def status_command(as_json: bool = _JSON) -> None:
    """Counts by status and priority, the oldest due event's age, the next scheduled one."""

    async def go() -> QueueStatus:
        async with Database(min_size=1, max_size=2) as db:
            return await queue_status(db)

    status = run(go())
    summary = {
        "by_status": status.by_status,
        "due": status.due,
        "oldest_due_at": status.oldest_due_at,
        "oldest_due_age_seconds": round(status.oldest_due_age_seconds, 1),
        "next_scheduled_at": status.next_scheduled_at,
        "expired_leases": status.expired_leases,
        "checked_at": status.checked_at,
    }
    if as_json:
        print_json({**summary, "by_status_and_priority": status.counts})
        return
    priorities = sorted({r["priority"] for r in status.counts})
    cells = {(r["status"], r["priority"]): r["events"] for r in status.counts}
    print_table(
        [
            {
                "status": s,
                **{f"p{p}": cells.get((s, p), 0) for p in priorities},
                "total": status.by_status[s],
            }
            for s in status.by_status
        ],
        title="Events by status and priority (0 = first)",
        columns=["status", *[f"p{p}" for p in priorities], "total"],
    )
    age = status.oldest_due_age_seconds
    console.print(
        f"due now: {status.due}, oldest due for {_age(age)}" if status.due else "due now: 0",
        highlight=False,
    )
    console.print(
        "next scheduled: "
        + (
            f"{status.next_scheduled_at:%Y-%m-%d %H:%M:%S%z}"
            if status.next_scheduled_at
            else "none"
        ),
        highlight=False,
    )
    if status.expired_leases:
        console.print(
            f"[yellow]{status.expired_leases} processing past their lease[/] (a "
            "stopped worker); the next process_email_queue run requeues them",
            highlight=False,
        )


def _clip(text: str | None, width: int) -> str | None:
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@app.command("list")
@command
def list_command(
    status: list[str] | None = typer.Option(
        None, "--status", help=f"Only this status (repeatable): {', '.join(STATUSES)}."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Changed within this long, e.g. 1h, 7d."
    ),
    ids: list[str] | None = typer.Option(
        None,
        "--id",
        help="Only these events (repeatable; a number or a UUID, as the ids are).",
    ),
    template: str | None = typer.Option(None, "--template", help="Only this template key."),
    to: str | None = typer.Option(None, "--to", help="Only this recipient."),
    limit: int = typer.Option(100, "--limit", help="At most this many rows."),
    as_json: bool = _JSON,
) -> None:
    """Events matching the filters, most recently changed first."""
    statuses = _statuses("--status", status, STATUSES)
    window = duration("--since", since) if since is not None else None

    async def go() -> list[dict[str, Any]]:
        async with Database(min_size=1, max_size=2) as db:
            return await list_events(
                db,
                statuses=statuses,
                since=window,
                ids=await typed_event_ids(db, ids),
                template=template,
                recipient=to,
                limit=limit,
            )

    rows = run(go())
    feedback = run(_latest_feedback(rows))
    if as_json:
        print_json([{**r, "feedback": _feedback_json(feedback.get(r["message_id"]))} for r in rows])
        return
    print_table(
        [
            {
                "id": r["id"],
                "status": r["status"],
                "pri": r["priority"],
                "to": r["recipient_email"],
                "template": r["template_key"],
                "retries": r["retry_count"],
                "due": short_time(r["scheduled_at"]),
                "changed": short_time(r["updated_at"]),
                "feedback": _feedback_cell(feedback.get(r["message_id"])),
                "error": _clip(r["last_error"], 70),
            }
            for r in rows
        ],
        title="Events (most recently changed first; --json for every column)",
    )
    if len(rows) == limit:
        console.print(f"(first {limit}; use --limit or filters for more)")


async def _latest_feedback(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Message-ID -> the latest provider report on that message (none: not in the dict)."""
    if not any(r.get("status") == "sent" for r in rows):
        return {}  # only sent messages get feedback: no query for a list of failures
    async with Database(min_size=1, max_size=1) as db:
        return await latest_feedback(db, (r["message_id"] for r in rows))


def _feedback_json(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "kind": row["feedback"],
        "at": row["feedback_at"],
        "provider": row["feedback_provider"],
        "events": row["feedback_events"],
        "confirmation_status": row["confirmation_status"],
    }


def _feedback_cell(row: dict[str, Any] | None) -> str | None:
    """``hard_bounce 12-05 20:01:02``: the latest report and when it arrived."""
    if row is None:
        return None
    return f"{row['feedback']} {short_time(row['feedback_at'])}"


@app.command("show")
@command
def show_command(
    event_id: str = typer.Argument(..., help="The event's id (a number or a UUID)."),
    as_json: bool = _JSON,
) -> None:
    """One event: its outbox row, the provider's acceptance, and what the provider reported
    after it (deliveries, bounces, complaints: latest last)."""

    async def go() -> EventFeedback:
        async with Database(min_size=1, max_size=1) as db:
            return await event_feedback(db, event_id)

    found = run(go())
    if as_json:
        print_json({"event": found.event, "feedback": found.feedback})
        return
    event = found.event
    print_table(
        [{"field": k, "value": v} for k, v in event.items() if v is not None],
        title=f"Event {event['id']}",
    )
    latest = found.latest
    if latest is None:
        console.print(
            "no feedback yet"
            + (" (sent: the provider has reported nothing)" if event["status"] == "sent" else ""),
            highlight=False,
        )
        return
    print_table(
        [
            {
                "received": short_time(f["received_at"]),
                "provider": f["provider"],
                "kind": f["kind"],
                "state": f["state"],
                "effect": ", ".join(f["effect"] or []) or None,
                "reason": _clip(f["reason"], 60),
            }
            for f in found.feedback
        ],
        title=f"Feedback (latest: {latest['kind']} at {short_time(latest['received_at'])})",
    )


def _report(result: AdminResult, verb: str, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                verb: result.changed,
                "failed_validation": result.revalidated,
                "refused": {str(k): v for k, v in result.refused.items()},
            }
        )
    else:
        ids = ", ".join(map(str, result.changed[:20])) + (
            ", ..." if len(result.changed) > 20 else ""
        )
        console.print(
            f"{verb} {len(result.changed)} event(s)" + (f": {ids}" if ids else ""),
            highlight=False,
            soft_wrap=True,
        )
        if result.revalidated:
            console.print(
                f"[yellow]{len(result.revalidated)} failed again at once[/] "
                "(invalid recipient, template key or event type): "
                + ", ".join(map(str, result.revalidated[:20])),
                highlight=False,
            )
        for event_id, why in result.refused.items():
            # soft_wrap: an id (a UUID on an adopted database) is never broken over two lines.
            err_console.print(
                f"event {event_id} left alone: {why}", highlight=False, soft_wrap=True
            )
    if result.refused:
        raise typer.Exit(1)


@app.command("retry")
@command
def retry_command(
    failed: bool = typer.Option(False, "--failed", help="Select failed events."),
    status: list[str] | None = typer.Option(
        None,
        "--status",
        help=f"Select events in this status (repeatable): {', '.join(RETRYABLE_STATUSES)}.",
    ),
    ids: list[str] | None = typer.Option(
        None,
        "--id",
        help="Only these events (repeatable; a number or a UUID, as the ids are).",
    ),
    since: str | None = typer.Option(
        None, "--since", help="Only events that changed (failed) within this long, e.g. 1h."
    ),
    template: str | None = typer.Option(None, "--template", help="Only this template key."),
    keep_retry_count: bool = typer.Option(
        False,
        "--keep-retry-count",
        help="Keep retry_count (default: reset to 0, so the "
        "event gets the full number of automatic retries again).",
    ),
    as_json: bool = _JSON,
) -> None:
    """Requeue failed (or cancelled/suppressed) events, due now.

    The next process_email_queue run sends them with the same Message-ID. Rows are locked
    one batch at a time (never the table); events being sent (processing) or sent are never
    touched. Exits 1 when an --id was left alone.
    """
    statuses = _statuses("--status", status, RETRYABLE_STATUSES)
    if failed and "failed" not in statuses:
        statuses.append("failed")
    if not statuses:
        if not ids:
            raise BadOption("say which events to retry: --failed, --status STATUS or --id ID")
        statuses = list(RETRYABLE_STATUSES)
    window = duration("--since", since) if since is not None else None

    async def go() -> AdminResult:
        async with Database(min_size=1, max_size=2) as db:
            return await retry_events(
                db,
                statuses=statuses,
                ids=await typed_event_ids(db, ids),
                since=window,
                template=template,
                reset_retry_count=not keep_retry_count,
            )

    _report(run(go()), "requeued", as_json)


@app.command("cancel")
@command
def cancel_command(
    ids: list[str] | None = typer.Option(
        None,
        "--id",
        help="Cancel this event (repeatable; a number or a UUID, as the ids are).",
    ),
    template: str | None = typer.Option(
        None, "--template", help="Cancel every queued event of this template."
    ),
    as_json: bool = _JSON,
) -> None:
    """Cancel queued events so they are never sent.

    An event a worker is sending right now (processing) is left alone and reported; exits 1
    when an --id was left alone."""

    async def go() -> AdminResult:
        async with Database(min_size=1, max_size=2) as db:
            return await cancel_events(db, ids=await typed_event_ids(db, ids), template=template)

    _report(run(go()), "cancelled", as_json)


@app.command("purge")
@command
def purge_command(
    status: list[str] = typer.Option(
        ...,
        "--status",
        help=f"Delete events in this status (repeatable): {', '.join(FINAL_STATUSES)}.",
    ),
    older_than: str = typer.Option(
        ..., "--older-than", help="Last changed longer ago than this, e.g. 90d."
    ),
    batch_size: int = typer.Option(1000, "--batch-size", help="Rows per transaction."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would go."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = _JSON,
) -> None:
    """Delete old finished events in batches, with a progress bar.

    Delivery history is kept: smtp_delivery_confirmations, delivery_attempts and the
    connection audit stay, their link to the event set to NULL (see README, "Operating
    mailpipe"). Queued and processing events are never purged.
    """
    statuses = _statuses("--status", status, FINAL_STATUSES)
    age = duration("--older-than", older_than)
    if batch_size < 1:
        raise BadOption(f"--batch-size {batch_size} must be at least 1")

    async def count() -> tuple[int, Any]:
        async with Database(min_size=1, max_size=2) as db:
            return await count_purgeable(db, statuses=statuses, older_than=age)

    matched, cutoff = run(count())
    what = f"{matched} {'/'.join(statuses)} event(s) last changed before {cutoff:%Y-%m-%d %H:%M}"
    if dry_run or matched == 0:
        if as_json:
            print_json({"matched": matched, "deleted": 0, "cutoff": cutoff, "dry_run": dry_run})
        else:
            console.print(
                f"would delete {what}" if dry_run else "nothing to purge", highlight=False
            )
        return
    if not yes and not typer.confirm(f"Delete {what}?"):
        raise typer.Exit(1)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=as_json,
    ) as bar:
        task = bar.add_task("purging", total=matched)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        async def go() -> PurgeResult:
            async with Database(min_size=1, max_size=2) as db:
                return await purge_events(
                    db, statuses=statuses, older_than=age, batch_size=batch_size, progress=advance
                )

        result = run(go())
    if as_json:
        print_json(
            {
                "matched": result.matched,
                "deleted": result.deleted,
                "batches": result.batches,
                "cutoff": result.cutoff,
                "dry_run": False,
            }
        )
    else:
        console.print(
            f"deleted {result.deleted} event(s) in {result.batches} batch(es); "
            "confirmations and attempts kept",
            highlight=False,
        )
