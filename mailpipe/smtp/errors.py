"""The SMTP error vocabulary: what went wrong, in terms retry, failover and the audit act on.

Every failure of connecting or sending becomes one :class:`SMTPError` subclass, which is also a
:class:`~mailpipe.errors.TransientError` (retry later) or a
:class:`~mailpipe.errors.PermanentError` (do not), and for network failures a
``ConnectionError`` / ``TimeoutError`` too, as aiosmtplib does. Each carries the reply
``code`` (None without one), the ``stage`` (connect, mail, rcpt, data) and ``kind``, the
``smtp_connection_audit.result`` word; its message is redacted.
"""

from __future__ import annotations

import socket
import ssl
from typing import ClassVar

import aiosmtplib

from mailpipe.errors import MailpipeError, PermanentError, TransientError
from mailpipe.providers import CredentialsError
from mailpipe.redaction import redact

# Results written to smtp_connection_audit.result (see its CHECK constraint).
AUDIT_RESULTS = (
    "ok",
    "refused",
    "timeout",
    "tls_error",
    "auth_failed",
    "smtp_error",
    "dns_error",
    "config_error",
)


class SMTPError(MailpipeError):
    """Root of the SMTP failures. ``provider_level``: the provider, not the message, failed
    (fail over to the next one); ``ambiguous``: the connection dropped after the message was
    handed over (the provider may have accepted it)."""

    transient: ClassVar[bool] = True
    provider_level: ClassVar[bool] = False
    ambiguous: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        kind: str = "smtp_error",
        code: int | None = None,
        stage: str | None = "connect",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code
        self.stage = stage


class ProviderUnavailable(SMTPError, TransientError, ConnectionError):
    """Cannot connect, TLS or AUTH failed, 421, or the connection was lost before DATA."""

    provider_level = True


class ProviderTimeout(ProviderUnavailable, TimeoutError):
    """The provider did not answer within its timeout."""


class DeliveryUncertain(ProviderUnavailable):
    """The connection was lost during DATA: the message may have been accepted (a retry
    may be a duplicate; the Message-ID stays the same)."""

    ambiguous = True


class ProviderRefused(SMTPError, PermanentError):
    """The provider refused the session itself with a 5xx (greeting, EHLO)."""

    transient = False
    provider_level = True


class MessageDeferred(SMTPError, TransientError):
    """A 4xx reply to this message: try it again later."""


class MessageRejected(SMTPError, PermanentError):
    """A 5xx reply to this message (or a message the server cannot take): never retried."""

    transient = False


class RecipientRefused(MessageRejected):
    """A 5xx reply to RCPT: a hard bounce (the address is suppressed)."""


def classify(exc: BaseException, *, stage: str, secrets: tuple[str | None, ...] = ()) -> SMTPError:
    """The :class:`SMTPError` for an exception from connecting or sending at ``stage``."""
    if isinstance(exc, SMTPError):
        return exc
    text = redact(str(exc).strip() or type(exc).__name__, secrets)
    code = getattr(exc, "code", None)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = redact(exc.message, secrets)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        code, text = first.code, redact(first.message, secrets)
    code = code if isinstance(code, int) and code > 0 else None

    if isinstance(exc, CredentialsError):
        return ProviderUnavailable(text, kind="config_error", stage=stage)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return ProviderUnavailable(
            f"authentication failed: {code} {text}", kind="auth_failed", code=code, stage=stage
        )
    if (
        isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPReadTimeoutError)
        and stage == "data"
    ):
        kind = "timeout" if isinstance(exc, aiosmtplib.SMTPReadTimeoutError) else "smtp_error"
        return DeliveryUncertain(f"connection lost during DATA: {text}", kind=kind, stage=stage)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return ProviderTimeout(f"timed out ({stage}): {text}", kind="timeout", stage=stage)
    if (
        isinstance(exc, ssl.SSLError | ssl.CertificateError)
        or _caused_by(exc, ssl.SSLError)
        or (isinstance(exc, aiosmtplib.SMTPException) and "TLS" in text.upper() and code is None)
    ):
        return ProviderUnavailable(f"TLS failed: {text}", kind="tls_error", stage=stage)
    if isinstance(exc, socket.gaierror) or _caused_by(exc, socket.gaierror):
        return ProviderUnavailable(f"cannot resolve host: {text}", kind="dns_error", stage=stage)
    if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionRefusedError):
        refused = (
            "refused" in text.lower()
            or "connect call failed" in text.lower()
            or _caused_by(exc, ConnectionRefusedError)
        )
        return ProviderUnavailable(
            f"cannot connect: {text}", kind="refused" if refused else "smtp_error", stage=stage
        )
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError | OSError):
        return ProviderUnavailable(f"connection lost ({stage}): {text}", stage=stage)
    if isinstance(exc, aiosmtplib.SMTPResponseException) or code is not None:
        code = code or 0
        if code == 421 or stage == "connect":
            # 421: the service is closing the channel; the provider, not the message, failed.
            if code < 500:
                return ProviderUnavailable(f"{code} {text}", code=code, stage=stage)
            return ProviderRefused(f"{code} {text}", code=code, stage=stage)
        if 400 <= code < 500:
            return MessageDeferred(f"{code} {text}", code=code, stage=stage)
        if stage == "rcpt":
            return RecipientRefused(f"{code} {text}", code=code, stage=stage)
        return MessageRejected(f"{code} {text}", code=code, stage=stage)
    if stage == "connect":
        return ProviderUnavailable(f"{type(exc).__name__}: {text}", stage=stage)
    # Not a network or protocol error: something about this message (an address the server
    # cannot take, say). Retrying will not change it; at RCPT it is the address's fault.
    rejected = RecipientRefused if stage == "rcpt" else MessageRejected
    return rejected(f"{type(exc).__name__}: {text}", stage=stage)


def not_attempted(down: SMTPError, provider: str) -> SMTPError:
    """The error for a message a provider never got to because ``down`` took it out of the
    run: same kind and permanence, but never ambiguous (nothing of it was sent)."""
    message = f"not attempted: {provider} was taken out of this run after {down.message}"
    cls = ProviderUnavailable if down.ambiguous or not down.provider_level else type(down)
    return cls(message, kind=down.kind, code=down.code, stage=down.stage)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
