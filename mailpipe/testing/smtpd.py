"""An in-process aiosmtpd server that records messages and misbehaves on request.

Tests, the reliability suites and the benchmarks talk to this real SMTP server on a free local
port. Its :class:`Behaviour` says how to answer: a fixed reply per command (``"451 4.3.0 try
later"``), a per-recipient reply, a scripted sequence of DATA replies, a delay before replying,
a dropped connection before or after DATA, AUTH required, STARTTLS or implicit TLS. A DATA
reply may carry ``{queue_id}``, replaced by a fresh id per message, like a provider's own
message id (``"250 Ok {queue_id}"`` as SES answers, ``"250 2.0.0 Ok: queued as {queue_id}"``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.parser
import email.policy
import ipaddress
import random
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)


@dataclass
class Behaviour:
    """How the server answers; every field defaults to a well-behaved server."""

    ehlo_reply: str | None = None  # e.g. "421 4.3.2 shutting down"
    ehlo_delay: float = 0.0  # seconds before answering EHLO (a stalled server)
    mail_reply: str | None = None
    rcpt_reply: str | None = None  # e.g. "550 5.1.1 no such user"
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # per recipient address
    data_reply: str | None = None  # e.g. "451 4.3.0 try later", "554 5.7.1 spam"
    # {queue_id} in a DATA reply becomes a fresh id per message ("250 Ok {queue_id}")
    data_script: list[str] = field(default_factory=list)  # consumed in order, then data_reply
    data_delay: float = 0.0  # seconds before answering DATA (a slow server)
    drop_before_data: bool = False  # close the connection at RCPT
    drop_after_data: bool = False  # accept the bytes, record them, close without a reply
    # reply (or "drop_after" / "drop_before") -> weight, drawn per message
    fault_mix: dict[str, float] = field(default_factory=dict)
    fault_seed: int = 0
    auth: tuple[str, str] | None = None  # (username, password) required when set


@dataclass
class Received:
    """One message the server accepted (or took before dropping the connection)."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    message_id: str | None
    accepted: bool
    received_at: dt.datetime
    reply: str | None = None  # what the server answered DATA ("drop_after": nothing)
    queue_id: str | None = None  # the id the reply carried ({queue_id}), if any


class _Handler:
    def __init__(self, server: SMTPTestServer) -> None:
        self.server = server

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.server.connections += 1
        behaviour = self.server.behaviour
        if behaviour.ehlo_delay:
            await asyncio.sleep(behaviour.ehlo_delay)
        if behaviour.ehlo_reply:
            return [behaviour.ehlo_reply]
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.server.behaviour.mail_reply:
            return self.server.behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        behaviour = self.server.behaviour
        fault = self.server.next_fault()
        if behaviour.drop_before_data or fault == "drop_before":
            self.server.dropped_before_data += 1
            server.transport.abort()
            return "250 OK"
        # Faults are drawn per message and kept on the session: connections run concurrently.
        session.mailpipe_fault = None if fault == "250" else fault  # type: ignore[attr-defined]
        reply = behaviour.rcpt_replies.get(address.lower()) or behaviour.rcpt_reply
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        behaviour = self.server.behaviour
        if behaviour.data_delay:
            await asyncio.sleep(behaviour.data_delay)
        reply = getattr(session, "mailpipe_fault", None) or self.server.next_data_reply()
        queue_id = None
        if reply and "{queue_id}" in reply:
            queue_id = uuid.uuid4().hex[:20]
            reply = reply.replace("{queue_id}", queue_id)
        session.mailpipe_fault = None  # type: ignore[attr-defined]
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        headers = _HEADERS.parsebytes(content, headersonly=True)
        drop = behaviour.drop_after_data or reply == "drop_after"
        accepted = drop or reply is None or reply.startswith("250")
        self.server.messages.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                content=content,
                message_id=headers.get("Message-ID"),
                accepted=accepted and not drop,
                received_at=dt.datetime.now(dt.UTC),
                reply="drop_after" if drop else (reply or "250 2.0.0 OK queued"),
                queue_id=queue_id,
            )
        )
        if drop:
            self.server.dropped_after_data += 1
            server.transport.abort()
            return "250 OK"
        return reply or "250 2.0.0 OK queued"


class SMTPTestServer:
    """A real SMTP server on 127.0.0.1 in a background thread; start(), then stop()."""

    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        tls: str = "none",
        certificate: Certificate | None = None,
        hostname: str = "127.0.0.1",
    ) -> None:
        if tls not in ("none", "starttls", "implicit"):
            raise ValueError(f"tls must be none, starttls or implicit, not {tls!r}")
        self.behaviour = behaviour or Behaviour()
        self.messages: list[Received] = []
        self.connections = 0
        self.dropped_after_data = 0
        self.dropped_before_data = 0
        self.tls = tls
        self.certificate = certificate
        self._lock = threading.Lock()
        self._random = random.Random(self.behaviour.fault_seed)
        # aiosmtpd's readiness check connects to the configured port, so port 0 cannot be used.
        kwargs: dict[str, Any] = {
            "hostname": hostname,
            "port": free_port(),
            "ready_timeout": 10,
            "enable_SMTPUTF8": True,
            "data_size_limit": 50 * 1024 * 1024,
        }
        if tls != "none":
            if certificate is None:
                raise ValueError("TLS needs a certificate (see make_certificate)")
            context = certificate.server_context()
            if tls == "starttls":
                kwargs.update(tls_context=context, require_starttls=False)
            else:
                kwargs.update(ssl_context=context)
        kwargs.update(auth_require_tls=False, authenticator=self._authenticate, auth_required=False)
        self._controller = Controller(_Handler(self), **kwargs)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        expected = self.behaviour.auth
        if expected is None:
            return AuthResult(success=True)
        if isinstance(auth_data, LoginPassword):
            ok = (auth_data.login.decode(), auth_data.password.decode()) == expected
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)

    def next_fault(self) -> str | None:
        """Draw the next message's fault from ``fault_mix`` (None: behave)."""
        mix = self.behaviour.fault_mix
        if not mix:
            return None
        with self._lock:
            return self._random.choices(list(mix), weights=list(mix.values()))[0]

    def next_data_reply(self) -> str | None:
        with self._lock:
            if self.behaviour.data_script:
                return self.behaviour.data_script.pop(0)
        return self.behaviour.data_reply

    @property
    def host(self) -> str:
        return self._controller.hostname

    @property
    def port(self) -> int:
        return self._controller.port

    def start(self) -> SMTPTestServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop(no_assert=True)

    def __enter__(self) -> SMTPTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def accepted(self) -> list[Received]:
        """Messages the server answered 250 to."""
        return [m for m in self.messages if m.accepted]

    def accepted_message_ids(self) -> list[str]:
        return [m.message_id for m in self.accepted if m.message_id]


def free_port() -> int:
    """A local port nobody listens on (for "connection refused" tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Certificate:
    """A self-signed certificate for 127.0.0.1/localhost, written to files."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificate(folder: Path) -> Certificate:
    """Create a self-signed certificate valid for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "smtpd-cert.pem", folder / "smtpd-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file)
