"""The outbox: enqueue events, claim due ones under a lease, rescue abandoned leases, and the
operators' queue commands (status, list, retry, cancel, purge).

A little over 400 lines: the operators' commands share the status rules and the id parsing of
the outbox they act on, and each function is short and reads on its own.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mailpipe.db import Database, Jsonb, Row
from mailpipe.errors import MailpipeError
from mailpipe.messages import InvalidMessage, check_header, sender_address, validate_recipient
from mailpipe.queries import query
from mailpipe.templates import TemplateCache, TemplateProblem
from mailpipe.values import EventId, parse_event_id

STATUSES = ("queued", "processing", "sent", "failed", "cancelled", "suppressed")
FINAL_STATUSES = ("sent", "failed", "cancelled", "suppressed")
MAX_PAYLOAD_BYTES = 256 * 1024


class InvalidEvent(MailpipeError):
    """An enqueue request is malformed; the message says which field and why."""


@dataclass(frozen=True)
class Enqueued:
    """The event an enqueue created, or found by its idempotency key."""

    id: EventId
    message_id: str
    status: str
    created: bool


async def enqueue(
    db: Database,
    to: str,
    template: str,
    data: dict[str, Any] | None = None,
    *,
    event_type: str | None = None,
    priority: int = 5,
    at: dt.datetime | None = None,
    idempotency_key: str | None = None,
) -> Enqueued:
    """Queue one email for ``to`` rendered from ``template`` with ``data``.

    Validates before writing (the database trigger would only mark a bad row failed): a bad
    address, priority or payload, an unknown template, a variable the template needs and
    ``data`` lacks, or a value that would put a line break into a header raises
    :class:`InvalidEvent` (see :func:`check_renders`). With an
    ``idempotency_key``, a repeated call returns the first event instead of a second one.
    The Message-ID is fixed here, at creation, and reused by every retry.
    """
    try:
        validate_recipient(to)
    except InvalidMessage as exc:
        raise InvalidEvent(f"{exc} ({to!r})") from None
    if not isinstance(template, str) or not template.strip():
        raise InvalidEvent("template: a template key is required")
    for name, value in (
        ("template", template),
        ("event_type", event_type),
        ("idempotency_key", idempotency_key),
    ):
        # Postgres text cannot hold NUL; refuse it here, naming the field.
        if value is not None and (not isinstance(value, str) or "\x00" in value):
            raise InvalidEvent(f"{name} must be text without NUL characters, not {value!r}")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidEvent(f"priority must be an integer from 0 (first) to 9, not {priority!r}")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InvalidEvent(f"data must be a JSON object, not {type(data).__name__}")
    try:
        encoded = json.dumps(data, allow_nan=False)  # NaN and Infinity are not JSON
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"data is not JSON-serialisable: {exc}") from None
    if len(encoded.encode()) > MAX_PAYLOAD_BYTES:
        raise InvalidEvent(
            f"data is {len(encoded.encode())} bytes; the limit is "
            f"{MAX_PAYLOAD_BYTES} (send links, not attachments)"
        )
    if "\x00" in encoded.replace("\\u0000", "\x00"):
        raise InvalidEvent("data contains a NUL character, which Postgres cannot store")
    if at is not None and at.tzinfo is None:
        raise InvalidEvent("at must be timezone-aware (e.g. 2026-01-01T09:00:00+00:00)")
    if idempotency_key is not None:
        # A repeat returns the first event as it is: nothing new to validate or write.
        existing = await db.fetch_one(query("find_by_idempotency_key"), (idempotency_key,))
        if existing is not None:
            return Enqueued(existing["id"], existing["message_id"], existing["status"], False)
    await check_renders(db, template, data)
    params = {
        "event_type": event_type or template,
        "recipient_email": to,
        "template_key": template,
        "priority": priority,
        "scheduled_at": at,
        "payload": Jsonb(data),
        "idempotency_key": idempotency_key,
    }
    row = await db.fetch_one(query("enqueue_event"), params)
    if row is not None:
        return Enqueued(row["id"], row["message_id"], row["status"], True)
    existing = await db.fetch_one(query("find_by_idempotency_key"), (idempotency_key,))
    assert existing is not None  # the conflict that suppressed the insert is this row
    return Enqueued(existing["id"], existing["message_id"], existing["status"], False)


async def check_renders(db: Database, template: str, data: dict[str, Any]) -> None:
    """Render the active version of ``template`` with ``data`` as delivery will (sandboxed,
    undefined variables refused) and check its headers; raises :class:`InvalidEvent` with
    the reason delivery would give. A template changed after the enqueue is checked again
    when the event is sent."""
    cache = TemplateCache()
    await cache.load(db, {template})
    try:
        rendered = cache.get(template).render(data)
        check_header("Subject", rendered.subject)
        if rendered.from_address:
            sender_address(check_header("From", rendered.from_address))
    except (TemplateProblem, InvalidMessage) as exc:
        raise InvalidEvent(str(exc)) from None


async def typed_event_ids(db: Database, texts: Sequence[str] | None) -> list[EventId] | None:
    """Event ids typed by a person (``--id``), as the database's id type (whole numbers or
    UUIDs); :class:`~mailpipe.errors.ConfigError` names an id of the wrong form."""
    if not texts:
        return None
    id_type = await db.fetch_value(query("admin_event_id_type"))
    return [parse_event_id(text, id_type) for text in texts]


async def typed_event_id(db: Database, text: str) -> EventId:
    """One event id typed by a person, as the database's id type (see :func:`typed_event_ids`)."""
    return parse_event_id(text, await db.fetch_value(query("admin_event_id_type")))


async def rescue_expired_leases(db: Database) -> list[EventId]:
    """Requeue events whose worker stopped before finishing them (lease expired)."""
    return [r["id"] for r in await db.fetch_all(query("rescue_expired_leases"))]


async def release_leases(db: Database, workers: Sequence[str]) -> list[Any]:
    """Requeue the events ``workers`` still hold (a stopping deliverer's); no retry counted.

    A drainer records every batch it claims before it stops, so this finds rows only when a
    batch could not be recorded (the database went away) or was cut short: they may have
    been sent, so they are marked ``may_be_duplicate`` as a lease rescue would mark them.
    """
    rows = await db.fetch_all(query("release_leases"), {"workers": list(workers)})
    return [r["id"] for r in rows]


async def claim_due_events(
    db: Database,
    *,
    batch_size: int,
    lease_seconds: int,
    worker: str,
    max_priority: int | None = None,
) -> list[Row]:
    """Claim up to ``batch_size`` due events for ``worker``, best priority first; with
    ``max_priority`` only events of that priority or better (a priority lane)."""
    params = {"batch_size": batch_size, "lease_seconds": lease_seconds, "worker": worker}
    if max_priority is None:
        rows = await db.fetch_all(query("claim_due_events"), params)
    else:
        rows = await db.fetch_all(
            query("claim_due_events_up_to_priority"), {**params, "max_priority": max_priority}
        )
    rows.sort(key=lambda r: (r["priority"], r["scheduled_at"], r["id"]))
    return rows


# ---------------------------------------------------------------- administration (mailpipe queue)
# Every write below locks only the rows it changes (FOR UPDATE SKIP LOCKED in a subselect, in
# batches), never a table, and never touches an event in `processing`: a running
# process_email_queue keeps claiming and finishing while an operator retries or purges.

RETRYABLE_STATUSES = ("failed", "cancelled", "suppressed")
CANCELLABLE_STATUSES = ("queued",)
ADMIN_BATCH_SIZE = 1000


@dataclass(frozen=True)
class QueueStatus:
    """The outbox now: counts by status and priority, and how late the queue is."""

    counts: list[Row]  # status, priority, events
    due: int  # queued and scheduled_at <= now
    oldest_due_at: dt.datetime | None
    oldest_due_age_seconds: float  # 0 with nothing due
    next_scheduled_at: dt.datetime | None  # the first queued event not due yet
    expired_leases: int  # processing past its lease (a stopped worker)
    checked_at: dt.datetime

    @property
    def by_status(self) -> dict[str, int]:
        """Events per status (every status listed, zeros included)."""
        totals = dict.fromkeys(STATUSES, 0)
        for row in self.counts:
            totals[row["status"]] = totals.get(row["status"], 0) + row["events"]
        return totals


@dataclass(frozen=True)
class AdminResult:
    """What a retry or cancel changed, and what it left alone and why."""

    changed: list[EventId]  # ids now queued (retry) or cancelled
    refused: dict[EventId, str]  # asked-for id -> why it was not changed
    revalidated: list[EventId]  # retried, but failed again by the validation trigger


async def queue_status(db: Database) -> QueueStatus:
    """Counts by status and priority, the oldest due event's age, the next scheduled time."""
    counts = await db.fetch_all(query("admin_queue_counts"))
    times = await db.fetch_one(query("admin_queue_times"))
    assert times is not None
    oldest = times["oldest_due_at"]
    age = (times["now"] - oldest).total_seconds() if oldest else 0.0
    return QueueStatus(
        counts,
        times["due"],
        oldest,
        max(age, 0.0),
        times["next_scheduled_at"],
        times["expired_leases"],
        times["now"],
    )


def _check_statuses(statuses: Sequence[str] | None, allowed: Sequence[str], verb: str) -> None:
    for status in statuses or ():
        if status not in allowed:
            raise InvalidEvent(
                f"cannot {verb} events in status {status!r}: only {', '.join(allowed)}"
            )


async def list_events(
    db: Database,
    *,
    statuses: Sequence[str] | None = None,
    since: dt.timedelta | None = None,
    ids: Sequence[EventId] | None = None,
    template: str | None = None,
    recipient: str | None = None,
    limit: int = 100,
) -> list[Row]:
    """Events matching every given filter, most recently changed first (at most ``limit``).

    ``since`` keeps events changed (``updated_at``) within that long before now.
    """
    _check_statuses(statuses, STATUSES, "list")
    if limit < 1:
        raise InvalidEvent("limit must be at least 1")
    return await db.fetch_all(
        query("admin_list_events"),
        {
            "statuses": list(statuses) if statuses else None,
            "since_seconds": since.total_seconds() if since is not None else None,
            "ids": list(ids) if ids else None,
            "template": template,
            "recipient": recipient.lower() if recipient else None,
            "limit": limit,
        },
    )


async def retry_events(
    db: Database,
    *,
    statuses: Sequence[str] = ("failed",),
    ids: Sequence[EventId] | None = None,
    since: dt.timedelta | None = None,
    template: str | None = None,
    reset_retry_count: bool = True,
    batch_size: int = ADMIN_BATCH_SIZE,
) -> AdminResult:
    """Put finished-but-undelivered events back in the queue, due now.

    Selects events in ``statuses`` (failed by default; cancelled and suppressed too if asked,
    never sent or processing) matching ``ids``, ``template`` and ``since``. Each keeps its
    Message-ID, so a duplicate stays recognisable. ``retry_count`` is reset to 0 by default:
    the operator's retry is a fresh start, else an event that exhausted its retries would
    fail again on the first transient error. The validation trigger re-checks every row: an
    invalid one is failed again at once (listed in ``revalidated``).
    """
    statuses = list(statuses)
    if not statuses:
        raise InvalidEvent("say which events to retry (e.g. --failed)")
    _check_statuses(statuses, RETRYABLE_STATUSES, "retry")
    changed, revalidated = await _batched_update(
        db,
        "admin_retry_events",
        {
            "statuses": statuses,
            "ids": list(ids) if ids else None,
            "template": template,
            "since_seconds": since.total_seconds() if since is not None else None,
            "reset": reset_retry_count,
        },
        batch_size,
    )
    refused = await _refused(db, ids, changed + revalidated, "retry", statuses)
    return AdminResult(changed, refused, revalidated)


async def cancel_events(
    db: Database,
    *,
    ids: Sequence[EventId] | None = None,
    template: str | None = None,
    batch_size: int = ADMIN_BATCH_SIZE,
) -> AdminResult:
    """Cancel queued events (by ``ids`` and/or ``template``) so they are never sent.

    Only ``queued`` events can be cancelled: one a worker has claimed (``processing``) is
    skipped and reported, it is being sent right now.
    """
    if not ids and not template:
        raise InvalidEvent("say which events to cancel: --id ID (repeatable) or --template KEY")
    changed, _ = await _batched_update(
        db,
        "admin_cancel_events",
        {"ids": list(ids) if ids else None, "template": template},
        batch_size,
    )
    refused = await _refused(db, ids, changed, "cancel", CANCELLABLE_STATUSES)
    return AdminResult(changed, refused, [])


async def _batched_update(
    db: Database, name: str, params: dict[str, Any], batch_size: int
) -> tuple[list[EventId], list[EventId]]:
    """Run a keyset-batched admin update until no row is left; (changed, failed again)."""
    changed: list[EventId] = []
    failed_again: list[EventId] = []
    after: str | None = None  # the last id of the previous batch, as text (any id type)
    while True:
        # Each batch is its own short transaction: row locks are held only that long.
        rows = await db.fetch_all(query(name), {**params, "after": after, "batch": batch_size})
        if not rows:
            return changed, failed_again
        for row in rows:
            (changed if row["status"] != "failed" else failed_again).append(row["id"])
        after = str(max(r["id"] for r in rows))


async def _refused(
    db: Database,
    ids: Sequence[EventId] | None,
    done: list[EventId],
    verb: str,
    wanted: Sequence[str],
) -> dict[EventId, str]:
    """Why each explicitly asked-for id was left alone."""
    missing = sorted(set(ids or ()) - set(done))
    if not missing:
        return {}
    found = {
        r["id"]: r["status"] for r in await db.fetch_all(query("admin_event_statuses"), (missing,))
    }
    refused = {}
    for event_id in missing:
        status = found.get(event_id)
        if status is None:
            refused[event_id] = "no such event"
        elif status == "processing":
            refused[event_id] = "a worker is sending it right now (processing)"
        elif status not in wanted:
            refused[event_id] = f"it is {status}; {verb} takes only {', '.join(wanted)} events"
        else:
            refused[event_id] = "locked by another command, or outside the other filters"
    return refused


@dataclass(frozen=True)
class PurgeResult:
    """What a purge deleted."""

    deleted: int
    matched: int  # counted before deleting (rows may change meanwhile)
    cutoff: dt.datetime  # events last changed before this were eligible
    batches: int


async def count_purgeable(
    db: Database, *, statuses: Sequence[str], older_than: dt.timedelta
) -> tuple[int, dt.datetime]:
    """How many events a purge would delete now, and the cutoff time it would use."""
    _check_purge(statuses, older_than)
    row = await db.fetch_one(
        query("admin_count_purgeable"),
        {"statuses": list(statuses), "seconds": older_than.total_seconds()},
    )
    assert row is not None
    return row["events"], row["cutoff"]


def _check_purge(statuses: Sequence[str], older_than: dt.timedelta) -> None:
    if not statuses:
        raise InvalidEvent("say which events to purge (e.g. --status sent)")
    for status in statuses:
        if status not in FINAL_STATUSES:
            raise InvalidEvent(
                f"cannot purge events in status {status!r}: only finished "
                f"ones ({', '.join(FINAL_STATUSES)})"
            )
    if older_than.total_seconds() <= 0:
        raise InvalidEvent("--older-than must be more than 0 (e.g. 90d)")


async def purge_events(
    db: Database,
    *,
    statuses: Sequence[str],
    older_than: dt.timedelta,
    batch_size: int = ADMIN_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> PurgeResult:
    """Delete finished events (``statuses`` among sent, failed, cancelled, suppressed) last
    changed more than ``older_than`` ago, ``batch_size`` rows per transaction.

    The delivery history is kept: ``smtp_delivery_confirmations`` and ``delivery_attempts``
    rows stay, their ``communication_event_id`` set to NULL by the foreign key. ``progress``
    is called with (deleted so far, total matched) after each batch.
    """
    if batch_size < 1:
        raise InvalidEvent("batch size must be at least 1")
    matched, cutoff = await count_purgeable(db, statuses=statuses, older_than=older_than)
    deleted = batches = 0
    if progress is not None:
        progress(0, matched)
    while True:
        n = await db.fetch_value(
            query("admin_purge_events"),
            {"statuses": list(statuses), "cutoff": cutoff, "batch": batch_size},
        )
        if not n:
            break
        deleted += n
        batches += 1
        if progress is not None:
            progress(deleted, max(matched, deleted))
    return PurgeResult(deleted, matched, cutoff, batches)
