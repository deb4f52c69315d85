"""Amazon SES through SNS: signature versions 1 and 2, the signing certificate, topic allow-list.

As AWS documents it ("Verifying the signatures of Amazon SNS messages"): the certificate URL
must be HTTPS on an SNS host (``sns.<region>.amazonaws.com``), the string to sign is the
message's fields in a fixed order, each as ``Name\\nvalue\\n``, and the signature is RSA
PKCS#1 v1.5 over SHA-1 (SignatureVersion 1) or SHA-256 (2). A SubscriptionConfirmation for an
allowed topic is confirmed by fetching its SubscribeURL (also an SNS host). The SES event inside
``Message`` is either an identity notification (``notificationType``) or a configuration-set
event (``eventType``): Bounce, Complaint, Delivery, DeliveryDelay, Reject and the rest.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailpipe.feedback.providers.base import (
    ProviderContext,
    UnverifiableBody,
    WebhookRequest,
    from_iso,
    invalid_event,
    parse_json,
    require_json_object,
    smtp_code_of,
    text,
)
from mailpipe.feedback.vocabulary import (
    FeedbackError,
    FeedbackEvent,
    FeedbackKind,
    FeedbackState,
    Forbidden,
    InvalidFeedback,
    Unauthenticated,
    Verification,
)

log = logging.getLogger(__name__)

NAME = "ses"
#: sns.<region>.amazonaws.com (and the China partition's .com.cn).
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")

_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
_IGNORED_SES = {"Send", "Open", "Click", "Rendering Failure", "Subscription", "Received"}


def string_to_sign(message: dict[str, Any]) -> bytes:
    """The canonical text SNS signs for this message type (optional Subject only if present)."""
    fields = _SIGNED_FIELDS[message["Type"]]
    out = []
    for name in fields:
        if name not in message:
            if name == "Subject":
                continue
            raise InvalidFeedback(f"SNS {message['Type']} lacks {name}")
        out.append(f"{name}\n{message[name]}\n")
    return "".join(out).encode("utf-8")


def check_sns_url(url: Any, what: str) -> str:
    """``url`` when it is HTTPS on an SNS host (no credentials, default port), else 403."""
    if not isinstance(url, str):
        raise Forbidden(f"{what} is missing")
    parts = urlsplit(url)
    host = parts.hostname or ""
    if (
        parts.scheme != "https"
        or not SNS_HOST.match(host)
        or parts.username
        or parts.password
        or parts.port not in (None, 443)
    ):
        raise Forbidden(
            f"{what} {parts.scheme}://{host}/... is not HTTPS on an SNS host "
            "(sns.<region>.amazonaws.com): refused"
        )
    return url


class SigningCertificates:
    """SNS signing certificates by URL: memory, then the disk cache, then HTTPS (verified TLS).

    With ``ca_file`` the certificate must also have been issued by that CA (tests use their own
    CA; a private deployment can pin Amazon's). Expired certificates are refused either way.
    """

    def __init__(self, cache_dir: Path, ca_file: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self._ca = x509.load_pem_x509_certificate(ca_file.read_bytes()) if ca_file else None
        self._memory: dict[str, x509.Certificate] = {}
        self._lock = asyncio.Lock()

    def cache_path(self, url: str) -> Path:
        """Where the certificate of ``url`` is cached on disk."""
        return self.cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()}.pem"

    async def get(self, url: str) -> x509.Certificate:
        """The trusted certificate at ``url`` (already checked to be an SNS URL)."""
        cert = self._memory.get(url)
        if cert is None:
            async with self._lock:
                cert = self._memory.get(url)
                if cert is None:
                    cert = await self._load(url)
                    self._check_issuer(cert)  # once: the certificate never changes
                    self._memory[url] = cert
        self._check_dates(cert)
        return cert

    async def _load(self, url: str) -> x509.Certificate:
        path = self.cache_path(url)
        if path.exists():
            pem = path.read_bytes()
        else:
            pem = await self._fetch(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(pem)
            tmp.replace(path)
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise Forbidden("the SNS signing certificate is not a PEM certificate") from None

    async def _fetch(self, url: str) -> bytes:
        import httpx  # only on a cache miss

        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
                response = await client.get(url)
                response.raise_for_status()
        except httpx.HTTPError as exc:
            # 503: SNS retries, and the certificate may be reachable then.
            raise FeedbackError(
                f"cannot fetch the SNS signing certificate ({type(exc).__name__})", status=503
            ) from None
        return response.content

    def _check_dates(self, cert: x509.Certificate) -> None:
        now = dt.datetime.now(dt.UTC)
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise Forbidden("the SNS signing certificate is expired or not yet valid")

    def _check_issuer(self, cert: x509.Certificate) -> None:
        if self._ca is None:
            return
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            raise Forbidden(
                "the SNS signing certificate was not issued by the CA of "
                "MAILPIPE_FEEDBACK_SES_CERT_CA_FILE"
            ) from None


class SesProvider:
    """``POST /feedback/ses``: SNS notifications carrying SES events."""

    name = NAME

    def __init__(self, context: ProviderContext) -> None:
        self.context = context
        settings = context.settings
        self.certificates = SigningCertificates(settings.cert_cache_dir, settings.ses_cert_ca_file)

    async def receive(self, request: WebhookRequest) -> list[FeedbackEvent]:
        """Verify the SNS message, confirm subscriptions, and normalise its SES events."""
        message = require_json_object(request.json(), "the SNS message")
        kind = message.get("Type")
        if kind not in _SIGNED_FIELDS:
            # Nothing to verify a signature over: an unknown SNS type is unverifiable.
            raise UnverifiableBody(f"unknown SNS message Type {kind!r}")
        topic = message.get("TopicArn")
        if topic not in self.context.settings.ses_topic_arns:
            raise Forbidden(
                f"SNS topic {topic!r} is not in MAILPIPE_FEEDBACK_SES_TOPIC_ARNS: refused"
            )
        await self.verify(message)
        if kind == "SubscriptionConfirmation":
            await self.confirm_subscription(message)
        if kind != "Notification":
            return [
                FeedbackEvent(
                    provider=NAME,
                    provider_event_id=str(message["MessageId"]),
                    kind=None,
                    provider_kind=kind,
                    verification=Verification.SIGNATURE,
                    payload=message,
                    occurred_at=from_iso(message.get("Timestamp")),
                )
            ]
        return self.events(message)

    async def verify(self, message: dict[str, Any]) -> None:
        """Check the signature against the signing certificate (401 when wrong)."""
        version = str(message.get("SignatureVersion", ""))
        algorithm = _HASHES.get(version)
        if algorithm is None:
            raise Unauthenticated(f"SNS SignatureVersion {version!r} is not 1 or 2")
        url = check_sns_url(message.get("SigningCertURL"), "SigningCertURL")
        cert = await self.certificates.get(url)
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Unauthenticated("the SNS signing certificate has no RSA key")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm())
        except (InvalidSignature, ValueError):
            raise Unauthenticated("SNS signature does not verify") from None

    async def confirm_subscription(self, message: dict[str, Any]) -> None:
        """Confirm an allowed topic's subscription (GET SubscribeURL, itself an SNS URL)."""
        url = check_sns_url(message.get("SubscribeURL"), "SubscribeURL")
        if not self.context.settings.ses_confirm_subscriptions:
            log.warning(
                "SNS subscription to %s not confirmed (MAILPIPE_FEEDBACK_SES_CONFIRM_SUBSCRIPTIONS"
                " is off): confirm it in the SNS console",
                message.get("TopicArn"),
            )
            return
        import httpx

        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
                (await client.get(url)).raise_for_status()
        except httpx.HTTPError as exc:
            raise FeedbackError(
                f"cannot confirm the SNS subscription ({type(exc).__name__}); SNS will retry",
                status=503,
            ) from None
        log.info("SNS subscription to %s confirmed", message.get("TopicArn"))

    def events(self, message: dict[str, Any]) -> list[FeedbackEvent]:
        """The SES event in a verified notification, one per recipient."""
        sns_id = str(message["MessageId"])
        try:
            ses = require_json_object(parse_json(str(message["Message"]).encode()), "SES event")
        except InvalidFeedback as exc:
            return [
                invalid_event(
                    NAME, sns_id, str(exc), payload=message, verification=Verification.SIGNATURE
                )
            ]
        return parse_ses_event(ses, sns_id, message)


def parse_ses_event(
    ses: dict[str, Any], sns_id: str, envelope: dict[str, Any]
) -> list[FeedbackEvent]:
    """Normalise one SES event (identity notification or configuration-set event)."""
    event_type = ses.get("notificationType") or ses.get("eventType")
    mail = ses.get("mail") if isinstance(ses.get("mail"), dict) else {}
    common = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), dict) else {}
    base = {
        "provider": NAME,
        "verification": Verification.SIGNATURE,
        "provider_message_id": text(mail.get("messageId")),
        "message_id": text(common.get("messageId")) or _header(mail, "Message-ID"),
        "payload": envelope,
    }
    found: list[tuple[str | None, FeedbackKind | None, dict[str, Any], str]] = []
    if event_type == "Bounce":
        bounce = ses.get("bounce") if isinstance(ses.get("bounce"), dict) else {}
        bounce_type = bounce.get("bounceType")
        kind = FeedbackKind.HARD_BOUNCE if bounce_type == "Permanent" else FeedbackKind.SOFT_BOUNCE
        for r in _objects(bounce.get("bouncedRecipients")):
            found.append((r.get("emailAddress"), kind, r, f"Bounce/{bounce_type}"))
        when = bounce.get("timestamp")
    elif event_type == "Complaint":
        complaint = ses.get("complaint") if isinstance(ses.get("complaint"), dict) else {}
        feedback_type = complaint.get("complaintFeedbackType")
        kind = None if feedback_type == "not-spam" else FeedbackKind.COMPLAINT
        for r in _objects(complaint.get("complainedRecipients")):
            found.append((r.get("emailAddress"), kind, r, "Complaint"))
        when = complaint.get("timestamp")
    elif event_type == "Delivery":
        delivery = ses.get("delivery") if isinstance(ses.get("delivery"), dict) else {}
        for r in _strings(delivery.get("recipients")):
            found.append((r, FeedbackKind.DELIVERED, delivery, "Delivery"))
        when = delivery.get("timestamp")
    elif event_type == "DeliveryDelay":
        delay = ses.get("deliveryDelay") if isinstance(ses.get("deliveryDelay"), dict) else {}
        for r in _objects(delay.get("delayedRecipients")):
            found.append((r.get("emailAddress"), FeedbackKind.DEFERRED, r, "DeliveryDelay"))
        when = delay.get("timestamp")
    elif event_type == "Reject":
        reject = ses.get("reject") if isinstance(ses.get("reject"), dict) else {}
        for r in _strings(mail.get("destination")):
            found.append((r, FeedbackKind.REJECTED, reject, "Reject"))
        when = mail.get("timestamp")
    elif event_type in _IGNORED_SES:
        for r in _strings(mail.get("destination")) or [None]:
            found.append((r, None, {}, str(event_type)))
        when = mail.get("timestamp")
    else:
        return [
            invalid_event(
                NAME,
                sns_id,
                f"unknown SES event type {event_type!r}",
                payload=envelope,
                verification=Verification.SIGNATURE,
                provider_kind=str(event_type),
            )
        ]
    if not found:
        return [
            invalid_event(
                NAME,
                sns_id,
                f"SES {event_type} names no recipient",
                payload=envelope,
                verification=Verification.SIGNATURE,
                provider_kind=str(event_type),
            )
        ]
    events = []
    for recipient, kind, detail, provider_kind in found:
        diagnostic = detail.get("diagnosticCode") or detail.get("smtpResponse") or None
        if isinstance(detail, dict) and event_type == "Reject":
            diagnostic = detail.get("reason")
        events.append(
            FeedbackEvent(
                **base,
                provider_event_id=f"{sns_id}:{recipient}" if recipient else sns_id,
                kind=kind,
                provider_kind=provider_kind,
                recipient=text(recipient),
                reason=text(diagnostic),
                smtp_code=smtp_code_of(diagnostic.split(";")[-1] if diagnostic else None),
                enhanced_status=text(detail.get("status")) if isinstance(detail, dict) else None,
                occurred_at=from_iso(when),
                state=FeedbackState.RECEIVED if kind else FeedbackState.IGNORED,
            )
        )
    return events


def _objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects of a recipients list (anything else in it is skipped)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    """The strings of a JSON list (anything else is skipped)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _header(mail: dict[str, Any], name: str) -> str | None:
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == name.lower():
            return text(header.get("value"))
    return None
