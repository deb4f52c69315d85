"""The bounce mailbox over IMAP: unseen DSN/ARF messages stored in the inbox, then flagged.

Once a message's bytes are fetched they take the Maildir reader's path
(:func:`~mailpipe.feedback.dsn.import_messages`): parsed, stored verbatim, each event once.
Only after a chunk of messages is stored are they flagged ``\\Seen`` (or moved, or deleted):
a crash between the two re-reads them next time, and the inbox's unique (provider, event id)
makes that re-read a no-op. Messages are fetched with ``BODY.PEEK[]`` so fetching alone never
marks them read.

The standard library's :mod:`imaplib` does the protocol (no IMAP library is in the dependency
tree); it blocks, so each exchange runs in a worker thread. The password comes from
``MAILPIPE_FEEDBACK_IMAP_PASSWORD`` or the Secret block named by ``..._PASSWORD_BLOCK`` and is
never logged nor put in an error.
"""

from __future__ import annotations

import asyncio
import imaplib
import ipaddress
import logging
import re
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailpipe.db import Database
from mailpipe.errors import MailpipeError
from mailpipe.feedback.dsn import ImportResult, import_messages
from mailpipe.feedback.settings import FeedbackSettings, resolve_secret
from mailpipe.redaction import redact

log = logging.getLogger(__name__)

Security = Literal["tls", "starttls", "plain"]
After = Literal["seen", "move", "delete"]

#: Messages fetched (and then flagged) per round trip: few exchanges, bounded memory.
CHUNK = 50


class ImapError(MailpipeError):
    """The bounce mailbox could not be read; the message says what to check."""


class ImapUnreachable(ImapError, ConnectionError):
    """No connection to the IMAP server (refused, timed out, TLS failed, connection lost)."""


class ImapLoginRefused(ImapError):
    """The server refused the login (wrong user or password, or plain login not allowed)."""


class ImapFolderMissing(ImapError):
    """The folder to read, or to move messages to, does not exist."""


def is_loopback(host: str) -> bool:
    """``host`` is this machine (plain IMAP is allowed only there: the password travels)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ImapMailbox:
    """Where the bounce mailbox is and what to do with a message once stored."""

    host: str
    username: str
    password: str = field(repr=False)
    port: int | None = None
    security: Security = "tls"
    folder: str = "INBOX"
    after: After = "seen"
    move_to: str | None = None
    ca_file: Path | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.security not in ("tls", "starttls", "plain"):
            raise ImapError(f"IMAP security {self.security!r} is not tls, starttls or plain")
        if self.security == "plain" and not is_loopback(self.host):
            raise ImapError(
                f"plain IMAP to {self.host} would send the password unencrypted: use "
                "security tls or starttls (plain is allowed only to a loopback address)"
            )
        if self.after not in ("seen", "move", "delete"):
            raise ImapError(f"IMAP after {self.after!r} is not seen, move or delete")
        if self.after == "move" and not self.move_to:
            raise ImapError("moving stored messages needs a folder: set --move-to")
        if self.after == "move" and self.move_to == self.folder:
            raise ImapError(f"--move-to {self.move_to!r} is the folder being read")

    @property
    def connect_port(self) -> int:
        """The port connected to: the one given, else IMAPS's 993 or IMAP's 143."""
        return self.port or (993 if self.security == "tls" else 143)

    @property
    def address(self) -> str:
        """``host:port`` as connected to."""
        return f"{self.host}:{self.connect_port}"

    @classmethod
    async def from_settings(cls, settings: FeedbackSettings, **overrides: object) -> ImapMailbox:
        """The mailbox of ``MAILPIPE_FEEDBACK_IMAP_*``, each value replaced by an override
        that is not None; the password is read from the environment or its Secret block."""
        values: dict[str, object] = {
            "host": settings.imap_host,
            "port": settings.imap_port,
            "security": settings.imap_security,
            "username": settings.imap_username,
            "folder": settings.imap_folder,
            "after": settings.imap_after,
            "move_to": settings.imap_move_to,
            "ca_file": settings.imap_ca_file,
            "timeout": settings.imap_timeout_seconds,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["host"]:
            raise ImapError("no IMAP server: give --host or set MAILPIPE_FEEDBACK_IMAP_HOST")
        if not values["username"]:
            raise ImapError("no IMAP login: give --user or set MAILPIPE_FEEDBACK_IMAP_USERNAME")
        password = await resolve_secret(settings, "imap_password")
        if not password:
            raise ImapError(
                "no IMAP password: set MAILPIPE_FEEDBACK_IMAP_PASSWORD, or "
                "MAILPIPE_FEEDBACK_IMAP_PASSWORD_BLOCK to a Prefect Secret block's name"
            )
        return cls(password=password, **values)  # type: ignore[arg-type]


def _quote(folder: str) -> str:
    # imaplib sends arguments as they are: a folder name with spaces or quotes must be quoted.
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


_UID = re.compile(rb"\bUID (\d+)")
#: The folder name ending a LIST line: quoted (may hold spaces and escapes) or an atom.
_LISTED = re.compile(r'"((?:[^"\\]|\\.)*)"$|(\S+)$')


class _Session:
    """One blocking IMAP connection (each method runs in a worker thread, one at a time)."""

    def __init__(self, box: ImapMailbox) -> None:
        self.box = box
        self.client: imaplib.IMAP4 | None = None
        self.capabilities: set[str] = set()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn socket, TLS and protocol failures into :class:`ImapError` saying what failed."""
        where = f"IMAP server {self.box.address}"
        try:
            yield
        except ImapError:
            raise
        except ssl.SSLError as exc:
            raise ImapUnreachable(
                f"TLS with {where} failed while {doing} ({self._clean(exc)}): check the host "
                "name, MAILPIPE_FEEDBACK_IMAP_SECURITY, and MAILPIPE_FEEDBACK_IMAP_CA_FILE for a "
                "private CA"
            ) from None
        except TimeoutError as exc:
            raise ImapUnreachable(
                f"{where} did not answer within {self.box.timeout:g}s while {doing} ({exc})"
            ) from None
        except imaplib.IMAP4.abort as exc:
            raise ImapUnreachable(
                f"{where} dropped the connection while {doing}: {self._clean(exc)}"
            ) from None
        except OSError as exc:
            raise ImapUnreachable(
                f"cannot reach {where} while {doing} ({exc.strerror or exc}): check "
                "MAILPIPE_FEEDBACK_IMAP_HOST and _PORT and that the server runs"
            ) from None
        except imaplib.IMAP4.error as exc:
            raise ImapError(f"{where} refused {doing}: {self._clean(exc)}") from None

    def _clean(self, exc: BaseException) -> str:
        text = exc.args[0] if exc.args else exc
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return redact(str(text), [self.box.password])

    def _check(self, answer: tuple[str, list], doing: str) -> list:
        typ, data = answer
        if typ != "OK":
            detail = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
            raise ImapError(f"IMAP server {self.box.address} refused {doing}: {typ} {detail}")
        return data

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.box.ca_file is not None:
            context.load_verify_locations(cafile=str(self.box.ca_file))
        return context

    def open(self) -> None:
        """Connect, secure, log in and open the folder read-write."""
        box = self.box
        port = box.connect_port
        with self._errors("connecting"):
            if box.security == "tls":
                self.client = imaplib.IMAP4_SSL(
                    box.host, port, ssl_context=self._context(), timeout=box.timeout
                )
            else:
                self.client = imaplib.IMAP4(box.host, port, timeout=box.timeout)
        client = self.client
        if box.security == "starttls":
            with self._errors("STARTTLS"):
                if "STARTTLS" not in client.capabilities:
                    raise ImapUnreachable(
                        f"IMAP server {box.address} does not offer STARTTLS: use security tls "
                        "(port 993) or a server that supports it"
                    )
                client.starttls(self._context())
        with self._errors("logging in"):
            try:
                client.login(box.username, box.password)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                raise ImapLoginRefused(
                    f"IMAP server {box.address} refused the login of {box.username!r} "
                    f"({self._clean(exc)}): check MAILPIPE_FEEDBACK_IMAP_USERNAME and the "
                    "password (MAILPIPE_FEEDBACK_IMAP_PASSWORD or _PASSWORD_BLOCK)"
                ) from None
            # The capabilities after login (MOVE, UIDPLUS) may differ from the greeting's.
            data = self._check(client.capability(), "CAPABILITY")
            self.capabilities = {c.upper() for c in b" ".join(data).decode().split()}
        with self._errors(f"opening folder {box.folder!r}"):
            if box.after == "move" and not self._exists(box.move_to or ""):
                raise ImapFolderMissing(
                    f"folder {box.move_to!r} to move stored messages to does not exist on "
                    f"{box.address}: create it, or pick another --move-to"
                )
            typ, _ = client.select(_quote(box.folder))
            if typ != "OK":
                raise ImapFolderMissing(
                    f"folder {box.folder!r} does not exist on {box.address} (folders: "
                    f"{', '.join(self._folders()) or 'none'}): set --folder or "
                    "MAILPIPE_FEEDBACK_IMAP_FOLDER"
                )

    def _folders(self) -> list[str]:
        assert self.client is not None
        typ, data = self.client.list()
        names = []
        for line in data if typ == "OK" else []:
            # (\HasNoChildren) "." "INBOX": the name is the last field.
            found = (
                _LISTED.search(line.decode(errors="replace")) if isinstance(line, bytes) else None
            )
            if found:
                names.append(found.group(1) if found.group(1) is not None else found.group(2))
        return names

    def _exists(self, folder: str) -> bool:
        assert self.client is not None
        typ, data = self.client.list('""', _quote(folder))
        return typ == "OK" and any(isinstance(d, bytes) for d in data)

    def unseen(self) -> list[bytes]:
        """The UIDs of the folder's unseen messages, oldest first."""
        assert self.client is not None
        with self._errors("searching unseen messages"):
            data = self._check(self.client.uid("SEARCH", "UNSEEN"), "SEARCH UNSEEN")
        return [uid for line in data if line for uid in line.split()]

    def fetch(self, uids: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        """(uid, whole message) of each of these UIDs still there, without marking them read."""
        assert self.client is not None
        with self._errors("fetching messages"):
            data = self._check(
                self.client.uid("FETCH", b",".join(uids).decode(), "(UID BODY.PEEK[])"),
                "FETCH",
            )
        fetched: list[tuple[bytes, bytes]] = []
        for index, item in enumerate(data):
            if not isinstance(item, tuple):
                continue  # the closing ")" of a literal, or an unsolicited FLAGS update
            found = _UID.search(item[0])
            if found is None and index + 1 < len(data) and isinstance(data[index + 1], bytes):
                found = _UID.search(data[index + 1])  # UID sent after the body
            if found is None:
                raise ImapError(f"IMAP server {self.box.address} sent a message without its UID")
            fetched.append((found.group(1), item[1]))
        return fetched

    def finish(self, uids: Sequence[bytes]) -> None:
        """Flag stored messages \\Seen, then move or delete them if asked."""
        if not uids:
            return
        assert self.client is not None
        client, box = self.client, self.box
        uid_set = b",".join(uids).decode()
        with self._errors(f"marking {len(uids)} stored message(s)"):
            self._check(client.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Seen)"), "STORE")
            if box.after == "seen":
                return
            if box.after == "move" and "MOVE" in self.capabilities:
                self._check(client.uid("MOVE", uid_set, _quote(box.move_to or "")), "MOVE")
                return
            if box.after == "move":
                self._check(client.uid("COPY", uid_set, _quote(box.move_to or "")), "COPY")
            self._check(client.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
            if "UIDPLUS" in self.capabilities:
                self._check(client.uid("EXPUNGE", uid_set), "UID EXPUNGE")
            else:
                # Without UIDPLUS, EXPUNGE also removes other messages someone flagged deleted.
                self._check(client.expunge(), "EXPUNGE")

    def close(self) -> None:
        """Log out (a failure here loses nothing: everything stored is flagged already)."""
        if self.client is None:
            return
        with suppress(OSError, imaplib.IMAP4.error):
            self.client.logout()
        self.client = None


async def import_imap(
    db: Database, box: ImapMailbox, *, verp_prefix: str = "bounces", limit: int | None = None
) -> ImportResult:
    """Store the folder's unseen messages (at most ``limit``), then flag each chunk \\Seen (or
    move or delete it) once stored. Reading again finds nothing new; a crash before the flag
    re-reads the chunk, and the inbox ignores the repeats."""
    session = _Session(box)
    result = ImportResult()
    try:
        await asyncio.to_thread(session.open)
        uids = await asyncio.to_thread(session.unseen)
        if limit is not None:
            uids = uids[:limit]
        log.info("IMAP %s %s: %d unseen message(s)", box.address, box.folder, len(uids))
        for start in range(0, len(uids), CHUNK):
            fetched = await asyncio.to_thread(session.fetch, uids[start : start + CHUNK])
            part = await import_messages(db, [raw for _, raw in fetched], verp_prefix=verp_prefix)
            result.add(part)
            await asyncio.to_thread(session.finish, [uid for uid, _ in fetched])
    finally:
        await asyncio.to_thread(session.close)
    log.info(
        "IMAP %s %s: %d message(s) read, %d event(s) stored, %d already stored, %d invalid",
        box.address,
        box.folder,
        result.messages,
        result.added,
        result.duplicates,
        result.invalid,
    )
    return result
