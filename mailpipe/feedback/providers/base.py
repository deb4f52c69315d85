"""What every provider route shares: the request as received, JSON and timestamp checks."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailpipe.feedback.settings import FeedbackSecrets, FeedbackSettings
from mailpipe.feedback.vocabulary import (
    FeedbackEvent,
    FeedbackState,
    Forbidden,
    InvalidFeedback,
    NotConfigured,
    Verification,
)

_UNPARSED = object()


@dataclass
class WebhookRequest:
    """One HTTP request as the provider sent it: header names lower-cased, the raw body."""

    headers: Mapping[str, str]
    body: bytes
    content_type: str | None = None
    received_at: float = field(default_factory=time.time)
    _json: Any = field(default=_UNPARSED, repr=False)

    def header(self, name: str) -> str | None:
        """A header's value (case-insensitive), or None."""
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON, parsed once (:class:`UnverifiableBody` when malformed)."""
        if self._json is _UNPARSED:
            self._json = parse_json(self.body)
        return self._json

    def is_whole_body(self, value: Any) -> bool:
        """Whether ``value`` is the parsed body itself (then the body text is stored as is)."""
        return self._json is not _UNPARSED and value is self._json


class Provider(Protocol):
    """A provider route: authenticates a request the way the provider documents it and turns
    it into normalised events (raises a :class:`FeedbackError` subclass otherwise)."""

    name: str

    async def receive(self, request: WebhookRequest) -> list[FeedbackEvent]:
        """The request's events; invalid ones (unknown type) carry state ``invalid``."""
        ...


@dataclass(frozen=True)
class ProviderContext:
    """Settings and resolved secrets a provider reads."""

    settings: FeedbackSettings
    secrets: FeedbackSecrets

    def secret(self, name: str, what: str) -> str:
        """The secret ``name``; :class:`NotConfigured` names the setting when it is missing."""
        value = self.secrets.get(name)
        if not value:
            raise NotConfigured(
                f"{what} is not configured: set MAILPIPE_FEEDBACK_{name.upper()} (or "
                f"MAILPIPE_FEEDBACK_{name.upper()}_BLOCK, a Prefect Secret block) and restart"
            )
        return value


class UnverifiableBody(InvalidFeedback):
    """A malformed body: nothing in it (a signature it carries) could be read."""


def parse_json(body: bytes) -> Any:
    """The body as JSON; :class:`UnverifiableBody` says where it broke."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise UnverifiableBody("body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise UnverifiableBody(f"malformed JSON: {exc.msg} at line {exc.lineno}") from None


def require_json_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` when it is a JSON object, else :class:`InvalidFeedback`."""
    if not isinstance(value, dict):
        raise InvalidFeedback(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def check_timestamp(value: str | None, tolerance: int, now: float, what: str) -> int:
    """A signed Unix timestamp within ``tolerance`` seconds of ``now`` (else 401/403)."""
    if value is None or not value.strip():
        raise Forbidden(f"{what} is missing")
    try:
        stamp = int(float(value))
    except ValueError:
        raise Forbidden(f"{what} is not a Unix timestamp") from None
    if abs(now - stamp) > tolerance:
        raise Forbidden(
            f"{what} is {int(now - stamp)} s away from now (tolerance {tolerance} s): "
            "an old request replayed, or a clock out of sync"
        )
    return stamp


def same_secret(given: str | bytes, expected: str | bytes) -> bool:
    """Constant-time comparison (no timing oracle on secrets)."""
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def body_digest(body: bytes) -> str:
    """SHA-256 of a body: the event id of a request that has none (a retry is a no-op)."""
    return hashlib.sha256(body).hexdigest()


def from_unix(value: Any) -> dt.datetime | None:
    """A provider's Unix timestamp (seconds, maybe fractional) as an aware datetime."""
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def from_iso(value: Any) -> dt.datetime | None:
    """A provider's ISO 8601 time as an aware datetime (None when absent or unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def invalid_event(
    provider: str,
    event_id: str,
    reason: str,
    *,
    payload: Any = None,
    verification: Verification,
    provider_kind: str | None = None,
) -> FeedbackEvent:
    """An event kept for inspection (unknown type, missing fields): never applied."""
    return FeedbackEvent(
        provider=provider,
        provider_event_id=event_id,
        kind=None,
        provider_kind=provider_kind,
        verification=verification,
        state=FeedbackState.INVALID,
        payload=payload,
        error=reason,
    )


def text(value: Any) -> str | None:
    """A JSON value as text, or None when absent/empty."""
    if value is None:
        return None
    out = str(value).strip()
    return out or None


def smtp_code_of(value: Any) -> int | None:
    """An SMTP reply code (3 digits) from a number or the start of a reply text."""
    if isinstance(value, int) and 200 <= value <= 599:
        return value
    if isinstance(value, str):
        head = value.strip()[:3]
        if head.isdigit() and 200 <= int(head) <= 599:
            return int(head)
    return None
