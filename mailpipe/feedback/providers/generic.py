"""The generic JSON route: any system that can sign (or carry) a shared secret.

Authentication, either:
- HMAC: ``X-Mailpipe-Timestamp: <unix seconds>`` and
  ``X-Mailpipe-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body>`` (timestamp within
  the tolerance; preferred: the secret never travels);
- bearer: ``Authorization: Bearer <secret>`` (over HTTPS only).

Body: one event or ``{"events": [...]}``; each event has ``id`` (unique per sender), ``kind``
(mailpipe's vocabulary: delivered, deferred, soft_bounce, hard_bounce, complaint, unsubscribe,
rejected), ``recipient``, and ``message_id`` and/or ``provider_message_id``; optional
``occurred_at`` (ISO 8601), ``reason``, ``smtp_code``, ``enhanced_status``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from mailpipe.feedback.providers.base import (
    ProviderContext,
    WebhookRequest,
    body_digest,
    check_timestamp,
    from_iso,
    invalid_event,
    same_secret,
    smtp_code_of,
    text,
)
from mailpipe.feedback.vocabulary import (
    FeedbackEvent,
    FeedbackKind,
    InvalidFeedback,
    Unauthenticated,
    Verification,
)

NAME = "generic"
SIGNATURE_HEADER = "X-Mailpipe-Signature"
TIMESTAMP_HEADER = "X-Mailpipe-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Mailpipe-Signature`` value for a body sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


class GenericProvider:
    """``POST /feedback/generic``: events in mailpipe's own vocabulary."""

    name = NAME

    def __init__(self, context: ProviderContext) -> None:
        self.context = context

    def authenticate(self, request: WebhookRequest) -> Verification:
        """HMAC signature with a fresh timestamp, or the bearer secret; 401/403 otherwise."""
        secret = self.context.secret("generic_secret", "the generic feedback route's secret")
        signature = request.header(SIGNATURE_HEADER)
        if signature is not None:
            timestamp = request.header(TIMESTAMP_HEADER) or ""
            if not same_secret(signature, sign(secret, timestamp, request.body)):
                raise Unauthenticated(f"{SIGNATURE_HEADER} does not verify")
            check_timestamp(
                timestamp,
                self.context.settings.timestamp_tolerance_seconds,
                request.received_at,
                TIMESTAMP_HEADER,
            )
            return Verification.SIGNATURE
        auth = request.header("authorization") or ""
        if auth.lower().startswith("bearer ") and same_secret(auth[7:].strip(), secret):
            return Verification.SHARED_SECRET
        raise Unauthenticated(f"{SIGNATURE_HEADER} or Authorization: Bearer is required")

    async def receive(self, request: WebhookRequest) -> list[FeedbackEvent]:
        """Authenticate, then read the events."""
        verification = self.authenticate(request)
        try:
            body = request.json()
        except InvalidFeedback as exc:
            exc.verification = verification
            raise
        if isinstance(body, dict) and isinstance(body.get("events"), list):
            items = body["events"]
        elif isinstance(body, dict):
            items = [body]
        else:
            exc = InvalidFeedback('send one event object or {"events": [...]}')
            exc.verification = verification
            raise exc
        return [parse_event(item, verification) for item in items]


def parse_event(item: Any, verification: Verification) -> FeedbackEvent:
    """One generic event, checked against the vocabulary."""
    if not isinstance(item, dict) or not text(item.get("id")):
        return invalid_event(
            NAME,
            f"missing-id:{body_digest(repr(item).encode())}",
            "each event needs an id",
            payload=item,
            verification=verification,
        )
    try:
        kind = FeedbackKind(str(item.get("kind")))
    except ValueError:
        return invalid_event(
            NAME,
            str(item["id"]),
            f"unknown kind {item.get('kind')!r}: one of {', '.join(FeedbackKind)}",
            payload=item,
            verification=verification,
            provider_kind=str(item.get("kind")),
        )
    if not (text(item.get("message_id")) or text(item.get("provider_message_id"))):
        return invalid_event(
            NAME,
            str(item["id"]),
            "each event needs message_id or provider_message_id",
            payload=item,
            verification=verification,
            provider_kind=kind.value,
        )
    return FeedbackEvent(
        provider=NAME,
        provider_event_id=str(item["id"]),
        kind=kind,
        provider_kind=kind.value,
        verification=verification,
        recipient=text(item.get("recipient")),
        message_id=text(item.get("message_id")),
        provider_message_id=text(item.get("provider_message_id")),
        reason=text(item.get("reason")),
        smtp_code=smtp_code_of(item.get("smtp_code")),
        enhanced_status=text(item.get("enhanced_status")),
        occurred_at=from_iso(item.get("occurred_at")),
        payload=item,
    )
