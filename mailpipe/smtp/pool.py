"""Persistent SMTP connections to one provider, reused across messages and batches."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import aiosmtplib

from mailpipe.config import Settings
from mailpipe.providers import CredentialsError, Provider, resolve_password
from mailpipe.smtp.client import Accepted, close_quietly, open_connection, send_message
from mailpipe.smtp.errors import SMTPError, classify


def connection_key(provider: Provider) -> tuple[Any, ...]:
    """What the connections depend on: a pool is reused while this stays the same."""
    return (
        provider.host,
        provider.port,
        provider.tls_mode,
        provider.username,
        str(provider.credentials),
        provider.timeout_seconds,
        provider.max_connections,
    )


class ConnectionPool:
    """Up to ``max_connections`` open sessions to one provider, one message in flight on each.

    :meth:`send` takes an idle connection (or opens one, resolving the password once), sends,
    and puts the connection back unless the provider failed it. Every failure is raised as an
    :class:`~mailpipe.smtp.errors.SMTPError`. ``sent`` and ``failures_in_a_row`` (provider-level
    failures since the last success) let the caller decide when the provider is down.
    """

    def __init__(self, provider: Provider, settings: Settings) -> None:
        self.provider = provider
        self.settings = settings
        self.sent = 0
        self.failures_in_a_row = 0
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(provider.max_connections)
        self._password: str | None = None
        self._password_loaded = False

    @property
    def name(self) -> str:
        """The provider's name."""
        return self.provider.name

    async def _connect(self) -> aiosmtplib.SMTP:
        if not self._password_loaded:
            try:
                self._password = await resolve_password(self.provider)
            except CredentialsError as exc:
                raise classify(exc, stage="connect") from None
            self._password_loaded = True
        return await open_connection(self.provider, self._password, self.settings)

    async def send(
        self, sender: str, recipient: str, data: bytes, *, smtputf8: bool = False
    ) -> Accepted:
        """Send one message (MAIL, RCPT, DATA) over a pooled connection."""
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            reused = client is not None
            for attempt in (1, 2):
                if client is None:
                    try:
                        client = await self._connect()
                    except SMTPError:
                        self.failures_in_a_row += 1
                        raise
                    reused = False
                try:
                    code, reply = await send_message(
                        client, sender, recipient, data, smtputf8=smtputf8
                    )
                except SMTPError as exc:
                    if not exc.provider_level:
                        if client.is_connected:  # reset by send_message: reusable
                            self._idle.append(client)
                        raise
                    await close_quietly(client)
                    client = None
                    # A kept-alive connection the server closed while idle: reconnect once;
                    # the message was not sent (nothing reached DATA).
                    if reused and attempt == 1 and exc.stage == "mail":
                        continue
                    self.failures_in_a_row += 1
                    raise
                self._idle.append(client)
                self.failures_in_a_row = 0
                self.sent += 1
                return Accepted(self.name, code, reply, dt.datetime.now(dt.UTC))
            raise AssertionError("unreachable: the second attempt returns or raises")

    async def close(self) -> None:
        """QUIT every idle connection."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(close_quietly(c) for c in idle))
