"""One ``process_email_feedback`` run: apply the inbox, then report what it did and what waits.

The flow stays a table of contents; this module owns the run (its own small pool), its summary
(the figures of :class:`~mailpipe.feedback.apply.FeedbackResult` plus the inbox backlog) and
how that summary reads: one log line, one table, one page.
"""

from __future__ import annotations

import logging
from typing import Any

from mailpipe.db import Database
from mailpipe.errors import MailpipeError
from mailpipe.feedback.apply import apply_feedback
from mailpipe.feedback.dsn import ImportResult
from mailpipe.queries import query

log = logging.getLogger(__name__)

# What a run's summary counts, in the order people read it.
RUN_COUNTS = ("applied", "unmatched", "errors", "status_changes", "suppressions", "attempts")
BACKLOG_COUNTS = ("due", "unmatched_retrying", "unmatched_kept", "errors")


async def apply_run(
    *, batch_size: int = 1000, max_batches: int | None = None, db: Database | None = None
) -> dict[str, Any]:
    """Apply every due inbox event (:func:`~mailpipe.feedback.apply.apply_feedback`) and
    return the run's figures with the backlog left behind (``backlog``)."""
    if db is None:
        async with Database(min_size=1, max_size=2) as own:
            return await apply_run(batch_size=batch_size, max_batches=max_batches, db=own)
    mailbox = await read_bounce_mailbox(db)
    result = await apply_feedback(db, batch_size=batch_size, max_batches=max_batches)
    backlog = await db.fetch_one(query("feedback_backlog"))
    assert backlog is not None  # an aggregate always returns its row
    summary: dict[str, Any] = result.as_dict()
    summary["error_messages"] = result.error_messages[:20]
    summary["backlog"] = {k: int(backlog[k]) for k in BACKLOG_COUNTS}
    summary["backlog"]["oldest_due_seconds"] = round(float(backlog["oldest_due_seconds"]), 1)
    if mailbox is not None:
        summary["mailbox"] = mailbox
    return summary


async def read_bounce_mailbox(db: Database) -> dict[str, Any] | None:
    """Store the IMAP bounce mailbox's unseen messages when one is configured
    (``MAILPIPE_FEEDBACK_IMAP_HOST``), so the run applies them at once: no separate reader
    to schedule. None when none is configured. A mailbox that cannot be read is reported
    (``error``) and never stops the run: the webhooks' events are applied all the same, and
    the messages wait on the server for the next run."""
    from mailpipe.feedback.imap import ImapMailbox, import_imap
    from mailpipe.feedback.settings import get_feedback_settings

    settings = get_feedback_settings()
    if not settings.imap_host:
        return None
    try:
        box = await ImapMailbox.from_settings(settings)
        result = await import_imap(db, box, verp_prefix=settings.verp_prefix)
    except (MailpipeError, OSError) as exc:  # ImapError is a MailpipeError
        log.warning("the bounce mailbox was not read: %s", exc)
        return {"messages": 0, "added": 0, "duplicates": 0, "invalid": 0, "error": str(exc)}
    return {**vars(result), "error": None}


def did_anything(summary: dict[str, Any]) -> bool:
    """The run looked at least at one event (worth a data-quality check)."""
    return any(summary.get(k) for k in ("applied", "unmatched", "errors"))


def log_line(summary: dict[str, Any]) -> str:
    """One line: ``applied 12, unmatched 1, errors 0, ... in 0.1s; waiting: due 0, ...``."""
    counts = ", ".join(f"{k} {summary[k]}" for k in RUN_COUNTS)
    waiting = ", ".join(f"{k} {summary['backlog'][k]}" for k in BACKLOG_COUNTS)
    line = (
        f"{counts} in {summary['elapsed_seconds']:.1f}s ({summary['batches']} batches); "
        f"waiting: {waiting}"
    )
    return line + _mailbox_text(summary.get("mailbox"), "; bounce mailbox: ")


def _mailbox_text(mailbox: dict[str, Any] | None, prefix: str) -> str:
    if mailbox is None:
        return ""
    if mailbox["error"]:
        return f"{prefix}not read ({mailbox['error']})"
    counts = {k: v for k, v in mailbox.items() if k != "error"}
    return prefix + ImportResult(**counts).describe()


def table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure (this run's, then the backlog's), for a table artifact."""
    return [{"figure": k, "events": summary[k]} for k in RUN_COUNTS] + [
        {"figure": f"backlog {k}", "events": summary["backlog"][k]} for k in BACKLOG_COUNTS
    ]


def markdown(summary: dict[str, Any]) -> str:
    """The run's report page: what was applied and what it changed, then what waits."""
    backlog = summary["backlog"]
    mailbox = _mailbox_text(summary.get("mailbox"), "\nBounce mailbox (IMAP): ")
    errors = "".join(f"- {m}\n" for m in summary.get("error_messages") or [])
    return (
        f"## process_email_feedback\n\n**{summary['applied']} applied** in "
        f"{summary['elapsed_seconds']:.1f} s ({summary['batches']} batches): "
        f"{summary['status_changes']} confirmation status changes, "
        f"{summary['suppressions']} suppressions, {summary['attempts']} bounced attempts; "
        f"{summary['unmatched']} matched no message yet, {summary['errors']} failed.\n\n"
        "| waiting | events |\n|---|---|\n"
        f"| due now | {backlog['due']} |\n"
        f"| unmatched, still retried | {backlog['unmatched_retrying']} |\n"
        f"| unmatched, kept for good | {backlog['unmatched_kept']} |\n"
        f"| failed (retried; `mailpipe feedback list --state error`) | {backlog['errors']} |\n"
        f"\nOldest due event: {backlog['oldest_due_seconds']:.0f} s.\n"
        + (f"{mailbox}\n" if mailbox else "")
        + (f"\n### Errors\n\n{errors}" if errors else "")
    )
