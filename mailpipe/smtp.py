"""SMTP over aiosmtplib: open a provider connection, send one message, classify failures.

Every failure becomes a :class:`Failure` with a vocabulary shared by delivery, the connection
audit and monitoring, and two answers the engine needs: retry later or not (``transient``), and
whether the provider rather than the message is at fault (``provider_level``: fail over).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import aiosmtplib

from mailpipe.config import Settings, get_settings
from mailpipe.providers import CredentialsError, Provider

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


@dataclass(frozen=True)
class Failure:
    """Why an SMTP operation failed, in terms the retry and failover logic can act on."""

    kind: str  # one of AUDIT_RESULTS except "ok"
    message: str  # for people: what happened, never a secret
    code: int | None = None
    transient: bool = True
    provider_level: bool = False
    stage: str = "connect"  # connect, mail, rcpt, data
    ambiguous: bool = False  # the connection dropped after the message was sent


class SMTPFailure(Exception):
    """Raised by :func:`send_message` and :func:`open_connection` with the classification."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.smtp_ca_file is None:
        return None
    return ssl.create_default_context(cafile=str(settings.smtp_ca_file))


def make_client(provider: Provider, settings: Settings | None = None) -> aiosmtplib.SMTP:
    """An unconnected client configured for the provider's host, port, TLS mode and timeout."""
    settings = settings or get_settings()
    context = _tls_context(settings)
    return aiosmtplib.SMTP(
        hostname=provider.host,
        port=provider.port,
        timeout=provider.timeout_seconds,
        use_tls=provider.tls_mode == "implicit",
        start_tls=provider.tls_mode == "starttls",
        validate_certs=settings.smtp_verify_certs,
        tls_context=context,
    )


async def open_connection(
    provider: Provider, password: str | None, settings: Settings | None = None
) -> aiosmtplib.SMTP:
    """Connect (and STARTTLS/TLS, AUTH as configured); raises :class:`SMTPFailure`."""
    client = make_client(provider, settings)
    try:
        await client.connect()
        if provider.username and password is not None:
            await client.login(provider.username, password)
    except Exception as exc:
        await close_quietly(client)
        raise SMTPFailure(classify(exc, stage="connect", secrets=(password,))) from None
    return client


async def close_quietly(client: aiosmtplib.SMTP) -> None:
    """QUIT if possible, else drop the transport; never raises."""
    try:
        if client.is_connected:
            await client.quit()
    except Exception:
        client.close()


async def send_message(
    client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes, *, smtputf8: bool = False
) -> tuple[int, str]:
    """MAIL, RCPT, DATA for one message; returns the final (code, reply).

    The three steps are issued separately so a failure says where it happened: a drop during
    DATA is ambiguous (the provider may have accepted the message), a drop earlier is not.
    """
    stage = "mail"
    try:
        encoding = "utf-8" if smtputf8 else "ascii"
        await client.mail(sender, options=["SMTPUTF8"] if smtputf8 else None, encoding=encoding)
        stage = "rcpt"
        await client.rcpt(recipient, encoding=encoding)
        stage = "data"
        response = await client.data(data)
        return response.code, response.message
    except Exception as exc:
        failure = classify(exc, stage=stage)
        if client.is_connected and not failure.provider_level:
            try:  # leave the session clean for the next message on this connection
                await client.rset()
            except Exception:
                client.close()
        raise SMTPFailure(failure) from None


def _redact(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def classify(exc: BaseException, *, stage: str, secrets: tuple[str | None, ...] = ()) -> Failure:
    """Map an exception from connecting or sending to a :class:`Failure`."""
    text = _redact(str(exc).strip() or type(exc).__name__, secrets)
    code = getattr(exc, "code", None)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = _redact(exc.message, secrets)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        code, text = first.code, _redact(first.message, secrets)
    code = code if isinstance(code, int) and code > 0 else None

    if isinstance(exc, CredentialsError):
        return Failure("config_error", text, transient=True, provider_level=True, stage=stage)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return Failure(
            "auth_failed",
            f"authentication failed: {code} {text}",
            code,
            transient=True,
            provider_level=True,
            stage=stage,
        )
    if (
        isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPReadTimeoutError)
        and stage == "data"
    ):
        kind = "timeout" if isinstance(exc, aiosmtplib.SMTPReadTimeoutError) else "smtp_error"
        return Failure(
            kind,
            f"connection lost during DATA: {text}",
            None,
            transient=True,
            provider_level=True,
            stage=stage,
            ambiguous=True,
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return Failure(
            "timeout",
            f"timed out ({stage}): {text}",
            None,
            transient=True,
            provider_level=True,
            stage=stage,
        )
    if (
        isinstance(exc, ssl.SSLError | ssl.CertificateError)
        or _caused_by(exc, ssl.SSLError)
        or (isinstance(exc, aiosmtplib.SMTPException) and "TLS" in text.upper() and code is None)
    ):
        return Failure(
            "tls_error",
            f"TLS failed: {text}",
            None,
            transient=True,
            provider_level=True,
            stage=stage,
        )
    if isinstance(exc, socket.gaierror) or _caused_by(exc, socket.gaierror):
        return Failure(
            "dns_error",
            f"cannot resolve host: {text}",
            None,
            transient=True,
            provider_level=True,
            stage=stage,
        )
    if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionRefusedError):
        refused = (
            "refused" in text.lower()
            or "connect call failed" in text.lower()
            or _caused_by(exc, ConnectionRefusedError)
        )
        kind = "refused" if refused else "smtp_error"
        return Failure(
            kind, f"cannot connect: {text}", None, transient=True, provider_level=True, stage=stage
        )
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError | OSError):
        return Failure(
            "smtp_error",
            f"connection lost ({stage}): {text}",
            None,
            transient=True,
            provider_level=True,
            stage=stage,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException) or code is not None:
        code = code or 0
        if code == 421 or stage == "connect":
            # 421: the service is closing the channel; the provider, not the message, failed.
            return Failure(
                "smtp_error",
                f"{code} {text}",
                code,
                transient=code < 500,
                provider_level=True,
                stage=stage,
            )
        if 400 <= code < 500:
            return Failure("smtp_error", f"{code} {text}", code, transient=True, stage=stage)
        return Failure("smtp_error", f"{code} {text}", code, transient=False, stage=stage)
    if stage == "connect":
        return Failure(
            "smtp_error",
            f"{type(exc).__name__}: {text}",
            None,
            transient=True,
            provider_level=True,
            stage=stage,
        )
    # Not a network or protocol error: something about this message (an address the server
    # cannot take, say). Retrying will not change it.
    return Failure(
        "smtp_error", f"{type(exc).__name__}: {text}", None, transient=False, stage=stage
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
