"""The health probe's SMTP session: connect, EHLO, TLS as configured, AUTH, NOOP, QUIT."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import aiosmtplib

from mailpipe.config import Settings
from mailpipe.providers import Provider
from mailpipe.redaction import redact
from mailpipe.smtp.client import make_client
from mailpipe.smtp.errors import AUDIT_RESULTS, classify


@dataclass(frozen=True)
class ProbeSession:
    """How a probe session went, in the connection audit's terms."""

    result: str  # one of AUDIT_RESULTS
    ip_address: str | None  # the address actually connected to (None: never connected)
    error: str | None  # "<stage>: <what went wrong>", never a secret


async def probe_session(
    provider: Provider, password: str | None, *, timeout: float, settings: Settings
) -> ProbeSession:
    """Run one whole probe session under ``timeout``; never raises."""
    stage = "connect"
    peer: str | None = None
    sock: socket.socket | None = None
    handed_over = False
    client: aiosmtplib.SMTP | None = None
    result, error = "ok", None
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect_socket(provider.host, provider.port)
            peer = _peer_address(sock)
            client = make_client(provider, settings)
            # The client takes over the connected socket: the peer is known even when the
            # greeting, EHLO or TLS then fails. The port is already in the socket.
            stage = "greeting and TLS"
            handed_over = True
            await client.connect(sock=sock, port=None)
            if client.is_ehlo_or_helo_needed:  # STARTTLS already said EHLO; else say it now
                stage = "EHLO"
                await client.ehlo()
            if provider.username and password is not None:
                stage = "AUTH"
                await client.login(provider.username, password)
            stage = "NOOP"
            await client.noop()
            stage = "QUIT"
            await client.quit()
    except TimeoutError as exc:
        # asyncio.timeout (whole probe) or aiosmtplib's own per-command timeout.
        result = "timeout"
        error = (
            f"{stage}: no answer within {timeout:g}s"
            if type(exc) is TimeoutError
            else f"{stage}: {classify(exc, stage='connect', secrets=(password,))}"
        )
    except Exception as exc:
        failure = classify(exc, stage="connect", secrets=(password,))
        result, error = failure.kind, f"{stage}: {failure}"
    finally:
        if client is not None and result != "ok":
            client.close()  # no QUIT on a broken session: it would wait for another timeout
        # Once a transport owns the socket, only the transport may close it: closing the fd
        # under a transport that is still shutting down (after QUIT over TLS, say) frees the
        # fd number while the event loop still maps it to that transport, and the next
        # connection that gets the number fails ("File descriptor N is used by transport").
        # (Once handed over, the transport, or asyncio when creating it fails, closes it.)
        if sock is not None and not handed_over:
            sock.close()
    if result not in AUDIT_RESULTS:  # defensive: the audit CHECK would refuse the whole batch
        result = "smtp_error"
    return ProbeSession(result, peer, redact(error, (password,)) if error else None)


async def _connect_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to the first address of ``host`` that answers."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last_error: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
        except BaseException:  # cancelled by the probe timeout
            sock.close()
            raise
    raise last_error or OSError(f"no address for {host}")


def _peer_address(sock: socket.socket) -> str | None:
    """The remote IP of a connected socket, as Postgres ``inet`` accepts it."""
    try:
        address = sock.getpeername()[0]
        return str(ipaddress.ip_address(address.split("%", 1)[0]))  # drop an IPv6 zone
    except (OSError, ValueError):
        return None
