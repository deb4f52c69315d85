"""The feedback vocabulary: normalised kinds, inbox states and how an event was authenticated.

Each enum mirrors a CHECK constraint of ``email_feedback_events`` (migration
``0010_add_email_feedback.sql``): the SQL and the Python spell every value the same way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mailpipe.errors import MailpipeError


class FeedbackKind(StrEnum):
    """What happened to a message after the provider accepted it."""

    DELIVERED = "delivered"  # the receiving server accepted it
    DEFERRED = "deferred"  # delayed; the provider keeps trying
    SOFT_BOUNCE = "soft_bounce"  # a temporary failure the provider gave up on (mailbox full)
    HARD_BOUNCE = "hard_bounce"  # a permanent failure (no such user): never send again
    COMPLAINT = "complaint"  # the recipient marked it as spam (feedback loop, ARF)
    UNSUBSCRIBE = "unsubscribe"  # the recipient unsubscribed through the provider
    REJECTED = "rejected"  # the provider refused to send it (its suppression list, a virus)


class FeedbackState(StrEnum):
    """Where an inbox row stands in processing."""

    RECEIVED = "received"  # stored, to apply
    APPLIED = "applied"  # matched to our message and applied
    UNMATCHED = "unmatched"  # no message of ours found (yet): retried for a while, then kept
    ERROR = "error"  # applying failed: the error is kept and it is retried
    INVALID = "invalid"  # malformed or of an unknown type: answered 400, kept for inspection
    IGNORED = "ignored"  # a provider event outside the vocabulary (opens, clicks, sends)


class Verification(StrEnum):
    """How an event was authenticated before it was stored."""

    SIGNATURE = "signature"  # SNS certificate, SendGrid ECDSA, Mailgun/Resend/generic HMAC
    SHARED_SECRET = "shared_secret"  # the generic route's bearer secret
    BASIC_AUTH = "basic_auth"  # Postmark's webhook URL credentials
    TOKEN = "token"  # Postmark's custom header
    MAILBOX = "mailbox"  # read from the bounce mailbox or imported by an operator
    UNVERIFIABLE = "unverifiable"  # malformed body whose signature could not be read


#: Confirmation status each kind moves a confirmation to (never backwards: see apply.py).
CONFIRMATION_STATUS = {
    FeedbackKind.DELIVERED: "delivered",
    FeedbackKind.HARD_BOUNCE: "bounced",
    FeedbackKind.COMPLAINT: "complained",
}

#: Suppression reason (email_suppressions.reason) each kind adds at once.
SUPPRESSION_REASON = {
    FeedbackKind.HARD_BOUNCE: "hard_bounce",
    FeedbackKind.COMPLAINT: "complaint",
    FeedbackKind.UNSUBSCRIBE: "unsubscribe",
}


class RawJson(str):
    """A JSON document kept as the provider sent it (the whole request body): stored as is,
    not parsed and dumped again."""


@dataclass
class FeedbackEvent:
    """One provider event, normalised, ready to be stored verbatim in the inbox."""

    provider: str
    provider_event_id: str
    kind: FeedbackKind | None
    provider_kind: str | None
    verification: Verification
    state: FeedbackState = FeedbackState.RECEIVED
    recipient: str | None = None
    message_id: str | None = None
    provider_message_id: str | None = None
    verp_token: str | None = None
    reason: str | None = None
    smtp_code: int | None = None
    enhanced_status: str | None = None
    occurred_at: dt.datetime | None = None
    payload: Any = None
    raw: str | None = None
    content_type: str | None = None
    replay_token: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recipient:
            self.recipient = self.recipient.strip().lower() or None
        if self.message_id:
            self.message_id = normalise_message_id(self.message_id)
        if self.reason and len(self.reason) > 2000:
            self.reason = self.reason[:2000]
        if self.kind is None and self.state is FeedbackState.RECEIVED:
            self.state = FeedbackState.IGNORED


def normalise_message_id(value: str) -> str | None:
    """``<local@domain>`` from a Message-ID with or without its angle brackets."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("<") and ">" in value:
        value = value[1 : value.index(">")]
    return f"<{value.strip()}>"


def mask_address(address: str | None) -> str:
    """``j***@example.com``: enough for an operator to tell domains apart, not a whole address."""
    if not address:
        return "-"
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


class FeedbackError(MailpipeError):
    """A feedback request or message that cannot be accepted; ``status`` is the HTTP answer."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidFeedback(FeedbackError):
    """Malformed body or unknown event type (400): stored for inspection, never applied.

    ``verification`` says whether the request was authenticated before the body broke (a
    signature inside a malformed body cannot even be read: None, stored as unverifiable).
    """

    status = 400
    verification: Verification | None = None


class Unauthenticated(FeedbackError):
    """Missing or wrong credentials or signature (401): nothing is stored or trusted."""

    status = 401


class Forbidden(FeedbackError):
    """Authenticated form, refused source: a topic not allowed, a certificate URL outside the
    provider's hosts, an expired timestamp, a replayed token (403). Nothing is stored."""

    status = 403


class NotConfigured(FeedbackError):
    """The route's provider has no secret configured (503: the provider retries later)."""

    status = 503
