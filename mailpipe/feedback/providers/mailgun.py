"""Mailgun webhooks: HMAC-SHA256 of timestamp + token with the webhook signing key.

As Mailgun documents it ("Securing webhooks"): the JSON body carries ``signature`` with
``timestamp``, ``token`` and ``signature`` (hex HMAC-SHA256 of timestamp concatenated with token,
keyed with the HTTP webhook signing key). The timestamp must be recent, and a token is used once:
mailpipe remembers tokens in the inbox (a replay with another event is refused, 403).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from mailpipe.feedback.providers.base import (
    ProviderContext,
    UnverifiableBody,
    WebhookRequest,
    check_timestamp,
    from_unix,
    invalid_event,
    same_secret,
    smtp_code_of,
    text,
)
from mailpipe.feedback.vocabulary import (
    FeedbackEvent,
    FeedbackKind,
    Unauthenticated,
    Verification,
)

NAME = "mailgun"

_KINDS: dict[str, FeedbackKind | None] = {
    "delivered": FeedbackKind.DELIVERED,
    "complained": FeedbackKind.COMPLAINT,
    "unsubscribed": FeedbackKind.UNSUBSCRIBE,
    "rejected": FeedbackKind.REJECTED,
    "accepted": None,
    "opened": None,
    "clicked": None,
    "stored": None,
}


def sign(key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature: hex HMAC-SHA256 of ``timestamp + token``."""
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


class MailgunProvider:
    """``POST /feedback/mailgun``: one Mailgun event (JSON)."""

    name = NAME

    def __init__(self, context: ProviderContext) -> None:
        self.context = context

    async def receive(self, request: WebhookRequest) -> list[FeedbackEvent]:
        """Verify signature, timestamp and token, then normalise the event."""
        key = self.context.secret("mailgun_signing_key", "Mailgun's webhook signing key")
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("signature"), dict):
            raise UnverifiableBody("a Mailgun webhook is a JSON object with a signature object")
        signed = body["signature"]
        timestamp, token = str(signed.get("timestamp", "")), str(signed.get("token", ""))
        expected = sign(key, timestamp, token)
        if not token or not same_secret(str(signed.get("signature", "")), expected):
            raise Unauthenticated("Mailgun signature does not verify")
        check_timestamp(
            timestamp,
            self.context.settings.timestamp_tolerance_seconds,
            request.received_at,
            "Mailgun signature timestamp",
        )
        event = parse_event(body)
        event.replay_token = token
        return [event]


def parse_event(body: dict[str, Any]) -> FeedbackEvent:
    """The ``event-data`` of a verified Mailgun webhook, normalised."""
    data = body.get("event-data")
    if not isinstance(data, dict) or not text(data.get("id")):
        return invalid_event(
            NAME,
            f"token:{body['signature'].get('token')}",
            "a Mailgun webhook needs event-data with an id",
            payload=body,
            verification=Verification.SIGNATURE,
        )
    name = str(data.get("event"))
    severity = data.get("severity")
    reason = text(data.get("reason"))
    if name == "failed":
        if severity == "temporary":
            kind: FeedbackKind | None = FeedbackKind.DEFERRED  # Mailgun retries it
        elif reason and reason.startswith("suppress"):
            kind = FeedbackKind.REJECTED  # on Mailgun's own suppression list: not sent
        elif reason == "old":
            kind = FeedbackKind.SOFT_BOUNCE  # temporary failures until Mailgun gave up
        else:
            kind = FeedbackKind.HARD_BOUNCE
    elif name in _KINDS:
        kind = _KINDS[name]
    else:
        return invalid_event(
            NAME,
            str(data["id"]),
            f"unknown Mailgun event {name!r}",
            payload=body,
            verification=Verification.SIGNATURE,
            provider_kind=name,
        )
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
    mid = text(headers.get("message-id"))
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
    detail = text(status.get("description")) or text(status.get("message"))
    return FeedbackEvent(
        provider=NAME,
        provider_event_id=str(data["id"]),
        kind=kind,
        provider_kind=name + (f"/{severity}" if severity else ""),
        verification=Verification.SIGNATURE,
        recipient=text(data.get("recipient")),
        message_id=mid,
        provider_message_id=mid.strip("<>") if mid else None,
        reason=detail or reason,
        smtp_code=smtp_code_of(status.get("code")),
        enhanced_status=text(status.get("enhanced-code")),
        occurred_at=from_unix(data.get("timestamp")),
        payload=body,
    )
