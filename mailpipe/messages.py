"""Building the bytes of one email: validated addresses, no header injection, UTF-8 throughout.

Uses the compat32 ``email.mime`` classes: here they build and serialise a multipart message in
~0.28 ms against ~1.1 ms for ``EmailMessage`` with ``policy.default``, and this runs once per
email on the hot path. The output is standard: RFC 2047 encoded UTF-8 subjects and names,
``multipart/alternative`` with text first and HTML second. Recipients whose mailbox name itself
is non-ASCII need SMTPUTF8 and go through the (slower) modern API, which encodes them right.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import SMTPUTF8
from email.utils import formataddr, formatdate, parseaddr
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from mailpipe.errors import PermanentError

# Reject all C0 controls and DEL: CR/LF and NUL in particular enable header injection.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")

_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP  # readable in raw form, safe for long lines


class InvalidMessage(PermanentError):
    """The message cannot be built (bad address, header injection, bad Message-ID)."""


@dataclass(frozen=True)
class Recipient:
    """A validated address: what goes in the envelope and in the To header."""

    address: str     # normalised; the punycode domain form when the mailbox is ASCII
    domain: str      # lower-case ASCII domain, for per-domain rate limits and suppressions
    smtputf8: bool   # the mailbox name is non-ASCII: the server must support SMTPUTF8


@lru_cache(maxsize=65536)
def validate_recipient(address: str) -> Recipient:
    """Validate and normalise one address (syntax only: no DNS on the hot path or in tests)."""
    if not isinstance(address, str) or not address:
        raise InvalidMessage("Invalid recipient_email: empty")
    if _CONTROL.search(address):
        raise InvalidMessage("Invalid recipient_email: contains a control character (CR/LF/NUL)")
    try:
        result = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InvalidMessage(f"Invalid recipient_email: {exc}") from None
    domain = (result.ascii_domain or result.domain).lower()
    if result.ascii_email:
        return Recipient(result.ascii_email, domain, False)
    return Recipient(result.normalized, domain, True)


def check_header(name: str, value: str) -> str:
    """Refuse a header value with a line break or control character (header injection)."""
    if _CONTROL.search(value):
        raise InvalidMessage(
            f"header injection refused: {name} contains a line break or control character"
        )
    return value


def _mime_text(body: str, subtype: str) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype)
    if body.isascii():
        part.set_payload(body, "us-ascii")
    else:
        part.set_payload(body, _UTF8_QP)
    return part


def build_message(*, sender: str, recipient: Recipient, subject: str, text: str,
                  html: str | None, message_id: str,
                  headers: dict[str, str] | None = None) -> bytes:
    """Serialise one message: text, or text + HTML as ``multipart/alternative``."""
    check_header("Subject", subject)
    check_header("From", sender)
    if not _MESSAGE_ID.match(message_id):
        raise InvalidMessage(f"malformed Message-ID {message_id!r}")
    for name, value in (headers or {}).items():
        check_header(name, value)
    if recipient.smtputf8:
        return _build_smtputf8(sender, recipient, subject, text, html, message_id, headers)

    msg: MIMENonMultipart | MIMEMultipart
    if html is None:
        msg = _mime_text(text, "plain")
    else:
        msg = MIMEMultipart("alternative")
        msg.set_boundary(mime_boundary(message_id, text, html))
        msg.attach(_mime_text(text, "plain"))
        msg.attach(_mime_text(html, "html"))
    name, address = parseaddr(sender)
    msg["From"] = formataddr((name, address), charset="utf-8") if name else address
    msg["To"] = recipient.address
    msg["Subject"] = subject if subject.isascii() else Header(subject, "utf-8")
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    for header, value in (headers or {}).items():
        msg[header] = value
    return msg.as_bytes()


def _build_smtputf8(sender: str, recipient: Recipient, subject: str, text: str,
                    html: str | None, message_id: str, headers: dict[str, str] | None) -> bytes:
    msg = EmailMessage(policy=SMTPUTF8)
    msg["From"] = sender
    msg["To"] = recipient.address
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    for header, value in (headers or {}).items():
        msg[header] = value
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
        msg.set_boundary(mime_boundary(message_id, text, html))
    return msg.as_bytes()


def sender_address(sender: str) -> str:
    """The envelope sender (MAIL FROM) of a From header value."""
    address = parseaddr(sender)[1]
    if not address or "@" not in address:
        raise InvalidMessage(f"invalid from address {sender!r}: configure the provider's or "
                             "the template's from_address")
    return address


def mime_boundary(message_id: str, *bodies: str) -> str:
    """A multipart boundary derived from the Message-ID instead of drawn at random.

    The same event then serialises to the same bytes on every retry, and ``mailpipe template
    render`` previews exactly what is sent. ``=_`` cannot occur in a quoted-printable body; a
    raw ASCII body that happens to contain it gets a numbered variant.
    """
    base = "=_mailpipe_" + hashlib.sha256(message_id.encode()).hexdigest()[:32]
    boundary, n = base, 0
    while any(boundary in body for body in bodies):
        n += 1
        boundary = f"{base}.{n}"
    return boundary
