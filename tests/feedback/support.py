"""Helpers for feedback tests: sent messages to match, and reading the inbox."""

from __future__ import annotations

import json
from typing import Any

from mailpipe.db import Database


async def add_sent_message(
    db: Database,
    recipient: str,
    *,
    provider: str = "primary",
    provider_message_id: str | None = None,
) -> dict[str, Any]:
    """A sent event and its confirmation, as the delivery engine records them; returns ids."""
    row = await db.fetch_one(
        "WITH e AS (INSERT INTO communication_events (event_type, recipient_email, template_key,"
        " status, sent_at, provider_name) VALUES ('welcome', %s, 'welcome', 'sent', now(), %s)"
        " RETURNING id, message_id)"
        " INSERT INTO smtp_delivery_confirmations (communication_event_id, recipient_email,"
        " smtp_response, provider_name, message_id, status, smtp_code, provider_message_id)"
        " SELECT id, %s, '250 ok', %s, message_id, 'accepted', 250, %s FROM e"
        " RETURNING communication_event_id AS event_id, id AS confirmation_id, message_id",
        (recipient, provider, recipient, provider, provider_message_id),
    )
    assert row is not None
    return row


async def inbox(db: Database) -> list[dict[str, Any]]:
    """Every inbox row, in arrival order."""
    return await db.fetch_all(
        "SELECT id, provider, provider_event_id, state, kind, provider_kind, recipient,"
        " message_id, provider_message_id, verp_token, verification, error, effect, attempts,"
        " matched_event_id, confirmation_id, payload, raw, replay_token"
        " FROM email_feedback_events ORDER BY id"
    )


def dumps(value: Any) -> bytes:
    """JSON bytes of a payload."""
    return json.dumps(value).encode()
