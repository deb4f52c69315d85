"""SendGrid Event Webhook: an ECDSA (P-256, SHA-256) signature over timestamp + body.

As Twilio SendGrid documents it ("Getting started with the Event Webhook Security
Features"): the signature (base64 DER) is in ``X-Twilio-Email-Event-Webhook-Signature``, the
timestamp in ``X-Twilio-Email-Event-Webhook-Timestamp``; the signed bytes are the timestamp
followed by the raw body; the verification key is the public key shown in the settings (base64
DER). The body is a JSON array of events, each with its ``sg_event_id``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailpipe.feedback.providers.base import (
    ProviderContext,
    WebhookRequest,
    body_digest,
    check_timestamp,
    from_unix,
    invalid_event,
    smtp_code_of,
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

NAME = "sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

_KINDS: dict[str, FeedbackKind | None] = {
    "delivered": FeedbackKind.DELIVERED,
    "deferred": FeedbackKind.DEFERRED,
    "dropped": FeedbackKind.REJECTED,
    "spamreport": FeedbackKind.COMPLAINT,
    "unsubscribe": FeedbackKind.UNSUBSCRIBE,
    "group_unsubscribe": FeedbackKind.UNSUBSCRIBE,
    "processed": None,
    "open": None,
    "click": None,
    "group_resubscribe": None,
}


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 DER as its settings show it, or PEM."""
    try:
        if "BEGIN PUBLIC KEY" in value:
            key = serialization.load_pem_public_key(value.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(value.strip()))
    except ValueError:
        raise NotConfigured(
            "MAILPIPE_FEEDBACK_SENDGRID_PUBLIC_KEY is not a public key (paste the base64 "
            "verification key from SendGrid's Event Webhook settings)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise NotConfigured("MAILPIPE_FEEDBACK_SENDGRID_PUBLIC_KEY is not an ECDSA key")
    return key


class SendGridProvider:
    """``POST /feedback/sendgrid``: a batch of SendGrid events."""

    name = NAME

    def __init__(self, context: ProviderContext) -> None:
        self.context = context
        self._key: ec.EllipticCurvePublicKey | None = None

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The configured verification key, parsed once."""
        if self._key is None:
            self._key = load_public_key(
                self.context.secret("sendgrid_public_key", "SendGrid's verification key")
            )
        return self._key

    async def receive(self, request: WebhookRequest) -> list[FeedbackEvent]:
        """Verify the signature and timestamp, then normalise every event of the batch."""
        key = self.public_key()
        signature = request.header(SIGNATURE_HEADER)
        if not signature:
            raise Unauthenticated(f"{SIGNATURE_HEADER} is missing")
        stamp = request.header(TIMESTAMP_HEADER) or ""
        try:
            key.verify(
                base64.b64decode(signature, validate=True),
                stamp.encode() + request.body,
                ec.ECDSA(hashes.SHA256()),
            )
        except (InvalidSignature, ValueError):
            raise Unauthenticated("SendGrid signature does not verify") from None
        check_timestamp(
            stamp,
            self.context.settings.timestamp_tolerance_seconds,
            request.received_at,
            TIMESTAMP_HEADER,
        )
        try:
            batch = request.json()
        except InvalidFeedback as exc:
            exc.verification = Verification.SIGNATURE
            raise
        if not isinstance(batch, list):
            raise _signed(InvalidFeedback("SendGrid posts a JSON array of events"))
        return [parse_event(e) for e in batch]


def _signed(exc: InvalidFeedback) -> InvalidFeedback:
    exc.verification = Verification.SIGNATURE
    return exc


def parse_event(event: Any) -> FeedbackEvent:
    """One SendGrid event, normalised (an unknown type is kept as invalid)."""
    if not isinstance(event, dict) or not text(event.get("sg_event_id")):
        return invalid_event(
            NAME,
            f"missing-id:{body_digest(json.dumps(event, sort_keys=True).encode())}",
            "a SendGrid event must be an object with sg_event_id",
            payload=event,
            verification=Verification.SIGNATURE,
        )
    name = str(event.get("event"))
    event_id = str(event["sg_event_id"])
    if name == "bounce":
        # type "blocked": the receiving server refused the message, not the address (soft).
        kind: FeedbackKind | None = (
            FeedbackKind.SOFT_BOUNCE if event.get("type") == "blocked" else FeedbackKind.HARD_BOUNCE
        )
    elif name in _KINDS:
        kind = _KINDS[name]
    else:
        return invalid_event(
            NAME,
            event_id,
            f"unknown SendGrid event {name!r}",
            payload=event,
            verification=Verification.SIGNATURE,
            provider_kind=name,
        )
    sg_message_id = text(event.get("sg_message_id"))
    reason = text(event.get("reason")) or text(event.get("response"))
    return FeedbackEvent(
        provider=NAME,
        provider_event_id=event_id,
        kind=kind,
        provider_kind=name + (f"/{event['type']}" if event.get("type") else ""),
        verification=Verification.SIGNATURE,
        recipient=text(event.get("email")),
        message_id=text(event.get("smtp-id")),
        # "<queue id>.<filter suffix>": the queue id is what the SMTP reply said (queued as).
        provider_message_id=sg_message_id.split(".", 1)[0] if sg_message_id else None,
        reason=reason,
        smtp_code=smtp_code_of(reason),
        enhanced_status=text(event.get("status")),
        occurred_at=from_unix(event.get("timestamp")),
        payload=event,
    )
