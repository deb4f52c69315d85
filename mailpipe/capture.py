"""A local SMTP capture server: accepts every message and files it in a Maildir.

The embedded default provider, so ``mailpipe demo`` and development send real SMTP without a
real mail provider. Open the Maildir with any mail client, or read the files: one per message.
"""

from __future__ import annotations

import mailbox
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailpipe.testing.smtpd import free_port


class _MaildirHandler:
    def __init__(self, maildir: Path) -> None:
        maildir.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(maildir, create=True)
        for sub in ("tmp", "new", "cur"):  # Maildir() only creates them for a new folder
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        rcpts = ", ".join(envelope.rcpt_tos)
        # Return-Path / Delivered-To record the envelope, as a local delivery agent would.
        prefix = f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {rcpts}\r\n".encode()
        self.maildir.add(prefix + content)
        self.count += 1
        return "250 2.0.0 OK captured"


class CaptureServer:
    """A capture server on ``host:port`` (a free port when 0) writing to ``maildir``."""

    def __init__(self, maildir: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = _MaildirHandler(maildir)
        self.maildir = maildir
        self.host = host
        self.port = port or free_port()
        self._controller = Controller(
            self.handler,
            hostname=host,
            port=self.port,
            data_size_limit=50 * 1024 * 1024,
            ready_timeout=10,
            enable_SMTPUTF8=True,
        )

    @property
    def count(self) -> int:
        """Messages captured since start."""
        return self.handler.count

    def start(self) -> CaptureServer:
        """Start serving in a background thread."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._controller.stop(no_assert=True)

    def __enter__(self) -> CaptureServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
