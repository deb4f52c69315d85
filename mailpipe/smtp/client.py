"""One SMTP session over aiosmtplib: open a provider connection, send one message, close."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass

import aiosmtplib

from mailpipe.config import Settings, get_settings
from mailpipe.providers import Provider
from mailpipe.smtp.errors import classify
from mailpipe.smtp.replies import provider_message_id


@dataclass(frozen=True)
class Accepted:
    """The provider answered 2xx to DATA."""

    provider: str
    code: int
    reply: str
    at: dt.datetime

    @property
    def provider_message_id(self) -> str | None:
        """The provider's own id of the message in its reply (SES ``Ok <id>``, ``queued as
        <id>``), which its webhooks quote; None when the reply gives none."""
        return provider_message_id(self.reply)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The system's trusted CAs plus ``MAILPIPE_SMTP_CA_FILE`` (None: aiosmtplib's default)."""
    if settings.smtp_ca_file is None or not settings.smtp_verify_certs:
        return None  # aiosmtplib then honours validate_certs (a given context would not)
    # create_default_context(cafile=...) would trust that file only: providers with public
    # certificates would then fail. The file adds to the system store instead.
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(settings.smtp_ca_file))
    return context


def make_client(provider: Provider, settings: Settings | None = None) -> aiosmtplib.SMTP:
    """An unconnected client configured for the provider's host, port, TLS mode and timeout
    (``MAILPIPE_SMTP_VERIFY_CERTS``, ``MAILPIPE_SMTP_CA_FILE`` for a private CA)."""
    settings = settings or get_settings()
    return aiosmtplib.SMTP(
        hostname=provider.host,
        port=provider.port,
        timeout=provider.timeout_seconds,
        use_tls=provider.tls_mode == "implicit",
        start_tls=provider.tls_mode == "starttls",
        validate_certs=settings.smtp_verify_certs,
        tls_context=_tls_context(settings),
    )


async def open_connection(
    provider: Provider, password: str | None, settings: Settings | None = None
) -> aiosmtplib.SMTP:
    """Connect (and STARTTLS/TLS, AUTH as configured); raises an
    :class:`~mailpipe.smtp.errors.SMTPError` (stage ``connect``)."""
    client = make_client(provider, settings)
    try:
        await client.connect()
        if provider.username and password is not None:
            await client.login(provider.username, password)
    except Exception as exc:
        await close_quietly(client)
        raise classify(exc, stage="connect", secrets=(password,)) from None
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
    Raises an :class:`~mailpipe.smtp.errors.SMTPError`.
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
        error = classify(exc, stage=stage)
        if client.is_connected and not error.provider_level:
            try:  # leave the session clean for the next message on this connection
                await client.rset()
            except Exception:
                client.close()
        raise error from None
