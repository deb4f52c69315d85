"""Resend webhooks, signed by Svix: HMAC-SHA256 of ``id.timestamp.body``.

As Svix documents it ("Verifying webhooks manually"): headers ``svix-id``, ``svix-timestamp``
and ``svix-signature`` (space-separated ``v1,<base64>`` entries, any may match); the key is the
base64 part of the secret after ``whsec_``; timestamps outside the tolerance are refused. The
body is one event: ``{"type": "email.bounced", "created_at": ..., "data": {...}}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

from mailpipe.feedback.providers.base import (
    ProviderContext,
    WebhookRequest,
    check_timestamp,
    from_iso,
    invalid_event,
    require_json_object,
    text,
)
from mailpipe.feedback.vocabulary import (
    FeedbackEvent,
    FeedbackKind,
    InvalidFeedback,
    NotConfigured,
    Unauthenticated,
    Verification,
)

NAME = "resend"

_KINDS: dict[str, FeedbackKind | None] = {
    "email.delivered": FeedbackKind.DELIVERED,
    "email.delivery_delayed": FeedbackKind.DEFERRED,
    "email.complained": FeedbackKind.COMPLAINT,
    "email.failed": FeedbackKind.REJECTED,
    "email.suppressed": FeedbackKind.REJECTED,
    "email.sent": None,
    "email.scheduled": None,
    "email.opened": None,
    "email.clicked": None,
    "email.received": None,
}


def svix_key(secret: str) -> bytes:
    """The HMAC key of a Svix secret (``whsec_<base64>``)."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise NotConfigured(
            "MAILPIPE_FEEDBACK_RESEND_SECRET is not a Svix secret (whsec_ followed by base64)"
        ) from None


def svix_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """The ``v1`` signature: base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class ResendProvider:
    """``POST /feedback/resend``: one Resend event."""

    name = NAME

    def __init__(self, context: ProviderContext) -> None:
        self.context = context

    async def receive(self, request: WebhookRequest) -> list[FeedbackEvent]:
        """Verify the Svix signature and timestamp, then normalise the event."""
        key = svix_key(self.context.secret("resend_secret", "Resend's webhook signing secret"))
        msg_id = request.header("svix-id")
        timestamp = request.header("svix-timestamp")
        given = request.header("svix-signature")
        if not msg_id or not timestamp or not given:
            raise Unauthenticated("svix-id, svix-timestamp and svix-signature are required")
        expected = svix_signature(key, msg_id, timestamp, request.body)
        candidates = [part.partition(",")[2] for part in given.split() if part.startswith("v1,")]
        if not any(hmac.compare_digest(c.encode(), expected.encode()) for c in candidates):
            raise Unauthenticated("Svix signature does not verify")
        check_timestamp(
            timestamp,
            self.context.settings.timestamp_tolerance_seconds,
            request.received_at,
            "svix-timestamp",
        )
        try:
            event = require_json_object(request.json(), "a Resend event")
        except InvalidFeedback as exc:
            exc.verification = Verification.SIGNATURE
            raise
        return parse_event(event, msg_id)


def parse_event(event: dict[str, Any], msg_id: str) -> list[FeedbackEvent]:
    """One Resend event, one normalised event per recipient."""
    name = str(event.get("type"))
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    if name == "email.bounced":
        bounce = data.get("bounce") if isinstance(data.get("bounce"), dict) else {}
        kind: FeedbackKind | None = (
            FeedbackKind.HARD_BOUNCE
            if bounce.get("type") == "Permanent"
            else FeedbackKind.SOFT_BOUNCE
        )
        reason = text(bounce.get("message"))
        provider_kind = f"{name}/{bounce.get('type')}"
    elif name in _KINDS:
        kind, reason, provider_kind = _KINDS[name], None, name
        failed = data.get("failed") if isinstance(data.get("failed"), dict) else {}
        reason = text(failed.get("reason"))
    elif name.startswith(("contact.", "domain.")):
        kind, reason, provider_kind = None, None, name
    else:
        return [
            invalid_event(
                NAME,
                msg_id,
                f"unknown Resend event type {name!r}",
                payload=event,
                verification=Verification.SIGNATURE,
                provider_kind=name,
            )
        ]
    recipients = data.get("to") or [None]
    if isinstance(recipients, str):
        recipients = [recipients]
    return [
        FeedbackEvent(
            provider=NAME,
            provider_event_id=msg_id if len(recipients) == 1 else f"{msg_id}:{recipient}",
            kind=kind,
            provider_kind=provider_kind,
            verification=Verification.SIGNATURE,
            recipient=text(recipient),
            provider_message_id=text(data.get("email_id")),
            reason=reason,
            occurred_at=from_iso(event.get("created_at")),
            payload=event,
        )
        for recipient in recipients
    ]
