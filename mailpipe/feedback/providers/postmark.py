"""Postmark webhooks: HTTP basic auth in the webhook URL, or a custom header with a token.

Postmark signs nothing: its documentation protects webhooks with basic-auth credentials in the
URL (``https://user:password@host/feedback/postmark``) and/or custom headers. One JSON object
per request, ``RecordType`` Bounce, SpamComplaint, Delivery, SubscriptionChange, Open, Click.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from mailpipe.feedback.providers.base import (
    ProviderContext,
    WebhookRequest,
    from_iso,
    invalid_event,
    require_json_object,
    same_secret,
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

NAME = "postmark"

#: Bounce ``Type`` values (Postmark's bounce types) to kinds; None: not about delivery.
BOUNCE_TYPES: dict[str, FeedbackKind | None] = {
    "HardBounce": FeedbackKind.HARD_BOUNCE,
    "BadEmailAddress": FeedbackKind.HARD_BOUNCE,
    "ManuallyDeactivated": FeedbackKind.HARD_BOUNCE,
    "SoftBounce": FeedbackKind.SOFT_BOUNCE,
    "Transient": FeedbackKind.SOFT_BOUNCE,
    "DnsError": FeedbackKind.SOFT_BOUNCE,
    "Blocked": FeedbackKind.SOFT_BOUNCE,
    "SpamComplaint": FeedbackKind.COMPLAINT,
    "Unsubscribe": FeedbackKind.UNSUBSCRIBE,
    "SMTPApiError": FeedbackKind.REJECTED,
    "VirusNotification": FeedbackKind.REJECTED,
    "TemplateRenderingFailed": FeedbackKind.REJECTED,
    "AutoResponder": None,
    "AddressChange": None,
    "ChallengeVerification": None,
    "OpenRelayTest": None,
    "SpamNotification": None,
    "DMARCPolicy": None,
    "InboundError": None,
    "Unknown": None,
}


class PostmarkProvider:
    """``POST /feedback/postmark``: one Postmark webhook record."""

    name = NAME

    def __init__(self, context: ProviderContext) -> None:
        self.context = context

    def authenticate(self, request: WebhookRequest) -> Verification:
        """Basic auth (user and password configured) or the token header; 401 otherwise."""
        settings = self.context.settings
        password = self.context.secrets.get("postmark_password")
        token = self.context.secrets.get("postmark_token")
        if not (password and settings.postmark_username) and not token:
            raise NotConfigured(
                "Postmark is not configured: set MAILPIPE_FEEDBACK_POSTMARK_USERNAME and "
                "MAILPIPE_FEEDBACK_POSTMARK_PASSWORD (basic auth in the webhook URL) or "
                "MAILPIPE_FEEDBACK_POSTMARK_TOKEN (a custom header)"
            )
        if token:
            given = request.header(settings.postmark_token_header)
            if given is not None and same_secret(given, token):
                return Verification.TOKEN
        if password and settings.postmark_username:
            user, given_password = _basic_credentials(request.header("authorization"))
            # Both compared, always: no early exit telling which one was wrong.
            user_ok = same_secret(user or "", settings.postmark_username)
            password_ok = same_secret(given_password or "", password)
            if user_ok and password_ok:
                return Verification.BASIC_AUTH
        raise Unauthenticated("Postmark credentials are missing or wrong")

    async def receive(self, request: WebhookRequest) -> list[FeedbackEvent]:
        """Authenticate, then normalise the record."""
        verification = self.authenticate(request)
        try:
            record = require_json_object(request.json(), "a Postmark webhook")
        except InvalidFeedback as exc:
            exc.verification = verification
            raise
        return [parse_record(record, verification)]


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, None)


def parse_record(record: dict[str, Any], verification: Verification) -> FeedbackEvent:
    """One Postmark record, normalised."""
    record_type = str(record.get("RecordType"))
    message_id = text(record.get("MessageID"))
    recipient = text(record.get("Email")) or text(record.get("Recipient"))
    common = {
        "provider": NAME,
        "verification": verification,
        "provider_message_id": message_id,
        "recipient": recipient,
        "payload": record,
    }
    if record_type in ("Bounce", "SpamComplaint"):
        bounce_type = str(record.get("Type"))
        if record_type == "SpamComplaint":
            kind: FeedbackKind | None = FeedbackKind.COMPLAINT
        elif bounce_type in BOUNCE_TYPES:
            kind = BOUNCE_TYPES[bounce_type]
        else:
            return invalid_event(
                NAME,
                f"bounce:{record.get('ID')}",
                f"unknown Postmark bounce Type {bounce_type!r}",
                payload=record,
                verification=verification,
                provider_kind=f"Bounce/{bounce_type}",
            )
        return FeedbackEvent(
            **common,
            provider_event_id=f"bounce:{record.get('ID') or message_id}",
            kind=kind,
            provider_kind=f"{record_type}/{bounce_type}",
            reason=text(record.get("Details")) or text(record.get("Description")),
            occurred_at=from_iso(record.get("BouncedAt")),
        )
    if record_type == "Delivery":
        return FeedbackEvent(
            **common,
            provider_event_id=f"delivery:{message_id}:{recipient}",
            kind=FeedbackKind.DELIVERED,
            provider_kind=record_type,
            reason=text(record.get("Details")),
            occurred_at=from_iso(record.get("DeliveredAt")),
        )
    if record_type == "SubscriptionChange":
        # Bounces and complaints arrive as their own records; an unsubscribe is a manual
        # suppression by the recipient. Reactivations change nothing here.
        manual = record.get("SuppressSending") is True and (
            record.get("SuppressionReason") == "ManualSuppression"
        )
        return FeedbackEvent(
            **common,
            provider_event_id=f"subscription:{message_id}:{recipient}:{record.get('ChangedAt')}",
            kind=FeedbackKind.UNSUBSCRIBE if manual else None,
            provider_kind=f"{record_type}/{record.get('SuppressionReason')}",
            occurred_at=from_iso(record.get("ChangedAt")),
        )
    if record_type in ("Open", "Click"):
        return FeedbackEvent(
            **common,
            provider_event_id=(
                f"{record_type.lower()}:{message_id}:{recipient}:"
                f"{record.get('ReceivedAt') or record.get('FirstOpen')}"
            ),
            kind=None,
            provider_kind=record_type,
        )
    return invalid_event(
        NAME,
        f"unknown:{message_id}:{record_type}:{recipient}",
        f"unknown Postmark RecordType {record_type!r}",
        payload=record,
        verification=verification,
        provider_kind=record_type,
    )
