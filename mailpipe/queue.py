"""The outbox: enqueue events, claim due ones under a lease, rescue abandoned leases."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from mailpipe.db import Database, Jsonb, Row
from mailpipe.errors import MailpipeError
from mailpipe.messages import InvalidMessage, validate_recipient
from mailpipe.queries import query

STATUSES = ("queued", "processing", "sent", "failed", "cancelled", "suppressed")
FINAL_STATUSES = ("sent", "failed", "cancelled", "suppressed")
MAX_PAYLOAD_BYTES = 256 * 1024


class InvalidEvent(MailpipeError):
    """An enqueue request is malformed; the message says which field and why."""


@dataclass(frozen=True)
class Enqueued:
    """The event an enqueue created, or found by its idempotency key."""

    id: int
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
    address, template key, priority or payload raises :class:`InvalidEvent`. With an
    ``idempotency_key``, a repeated call returns the first event instead of a second one.
    The Message-ID is fixed here, at creation, and reused by every retry.
    """
    try:
        validate_recipient(to)
    except InvalidMessage as exc:
        raise InvalidEvent(f"{exc} ({to!r})") from None
    if not isinstance(template, str) or not template.strip():
        raise InvalidEvent("template: a template key is required")
    if not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidEvent(f"priority must be an integer from 0 (first) to 9, not {priority!r}")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InvalidEvent(f"data must be a JSON object, not {type(data).__name__}")
    try:
        encoded = json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"data is not JSON-serialisable: {exc}") from None
    if len(encoded.encode()) > MAX_PAYLOAD_BYTES:
        raise InvalidEvent(f"data is {len(encoded.encode())} bytes; the limit is "
                           f"{MAX_PAYLOAD_BYTES} (send links, not attachments)")
    if "\x00" in encoded.replace("\\u0000", "\x00"):
        raise InvalidEvent("data contains a NUL character, which Postgres cannot store")
    if at is not None and at.tzinfo is None:
        raise InvalidEvent("at must be timezone-aware (e.g. 2026-01-01T09:00:00+00:00)")
    params = {
        "event_type": event_type or template, "recipient_email": to, "template_key": template,
        "priority": priority, "scheduled_at": at, "payload": Jsonb(data),
        "idempotency_key": idempotency_key,
    }
    row = await db.fetch_one(query("enqueue_event"), params)
    if row is not None:
        return Enqueued(row["id"], row["message_id"], row["status"], True)
    existing = await db.fetch_one(query("find_by_idempotency_key"), (idempotency_key,))
    assert existing is not None  # the conflict that suppressed the insert is this row
    return Enqueued(existing["id"], existing["message_id"], existing["status"], False)


async def rescue_expired_leases(db: Database) -> list[int]:
    """Requeue events whose worker stopped before finishing them (lease expired)."""
    return [r["id"] for r in await db.fetch_all(query("rescue_expired_leases"))]


async def claim_due_events(db: Database, *, batch_size: int, lease_seconds: int,
                           worker: str) -> list[Row]:
    """Claim up to ``batch_size`` due events for ``worker``, best priority first."""
    rows = await db.fetch_all(query("claim_due_events"), {
        "batch_size": batch_size, "lease_seconds": lease_seconds, "worker": worker})
    rows.sort(key=lambda r: (r["priority"], r["scheduled_at"], r["id"]))
    return rows
