"""Building the bytes of one email: validated addresses, no header injection, UTF-8 throughout.

This runs once per email on the hot path, so the common case (an ASCII mailbox) is serialised
directly: ~0.1 ms against ~0.7 ms for the compat32 ``email.mime`` classes and ~1.1 ms for
``EmailMessage`` with ``policy.default`` measured here. The output is standard: RFC 2047
encoded UTF-8 subjects and names, ``multipart/alternative`` with text first and HTML second.
Recipients whose mailbox name itself is non-ASCII need SMTPUTF8 and go through the (slower)
modern API, which encodes them right.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import time
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTPUTF8
from email.utils import formataddr, formatdate, parseaddr
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from mailpipe.errors import PermanentError

# Reject all C0 controls and DEL: CR/LF and NUL in particular enable header injection. Also
# C1 controls and the Unicode line separators: parsers split lines at NEL, U+2028 and U+2029.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")


class InvalidMessage(PermanentError):
    """The message cannot be built (bad address, header injection, bad Message-ID)."""


@dataclass(frozen=True)
class Recipient:
    """A validated address: what goes in the envelope and in the To header."""

    address: str  # normalised; the punycode domain form when the mailbox is ASCII
    domain: str  # lower-case ASCII domain, for per-domain rate limits and suppressions
    smtputf8: bool  # the mailbox name is non-ASCII: the server must support SMTPUTF8


@lru_cache(maxsize=4096)  # bounded: memory must stay flat however long the queue
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


def _needs_encoded_words(value: str) -> bool:
    """ASCII text that must still go out as RFC 2047 encoded words: text a reader would decode
    as one ("=?utf-8?q?...?="), or a word too long to fold under the 998-character line limit
    (encoded words can be split, plain words cannot)."""
    return "=?" in value or any(len(word) > 75 for word in value.split())


def _fold(name: str, value: str) -> str:
    """One header line; folded the compat32 way only when longer than 78 characters."""
    if len(name) + len(value) + 2 <= 78:
        return f"{name}: {value}\n"
    return f"{name}: {Header(value, header_name=name).encode(linesep=chr(10))}\n"


def _text_part(body: str, subtype: str) -> str:
    """Headers and body of one text part: 7bit for short-lined ASCII, else quoted-printable."""
    body = body.replace("\r\n", "\n").replace("\r", "\n")  # SMTP sends CRLF for every "\n"
    if body.isascii() and all(len(line) <= 998 for line in body.split("\n")):
        return (
            f'Content-Type: text/{subtype}; charset="us-ascii"\nMIME-Version: 1.0\n'
            f"Content-Transfer-Encoding: 7bit\n\n{body}"
        )
    # binascii's C quoted-printable encoder: 76-column soft breaks, "=" always escaped.
    encoded = binascii.b2a_qp(body.encode("utf-8"), istext=True).decode("ascii")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\nMIME-Version: 1.0\n'
        f"Content-Transfer-Encoding: quoted-printable\n\n{encoded}"
    )


_date_cache: tuple[int, str] = (0, "")


def _date_header() -> str:
    # formatdate is measurable per message; the header only changes once a second.
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def build_message(
    *,
    sender: str,
    recipient: Recipient,
    subject: str,
    text: str,
    html: str | None,
    message_id: str,
    headers: dict[str, str] | None = None,
) -> bytes:
    """Serialise one message: text, or text + HTML as ``multipart/alternative``."""
    check_header("Subject", subject)
    check_header("From", sender)
    if not _MESSAGE_ID.match(message_id):
        raise InvalidMessage(f"malformed Message-ID {message_id!r}")
    for name, value in (headers or {}).items():
        check_header(name, value)
    if recipient.smtputf8:
        return _build_smtputf8(sender, recipient, subject, text, html, message_id, headers)

    # Serialised by hand: the email package's generator spends ~0.5 ms per message folding
    # headers that need no folding. Values are validated above (no CR/LF/controls), non-ASCII
    # display names and subjects are RFC 2047 encoded, bodies 7bit or quoted-printable.
    head = [_from_line(sender), _fold("To", recipient.address)]
    if subject.isascii() and not _needs_encoded_words(subject):
        head.append(_fold("Subject", subject))
    else:
        head.append(f"Subject: {Header(subject, 'utf-8').encode(linesep=chr(10))}\n")
    head.append(f"Date: {_date_header()}\n")
    head.append(_fold("Message-ID", message_id))
    head.extend(_fold(header, value) for header, value in (headers or {}).items())
    if html is None:
        content_headers, _, body = _text_part(text, "plain").partition("\n\n")
        out = content_headers + "\n" + "".join(head) + "\n" + body
    else:
        boundary = mime_boundary(message_id, text, html)
        out = (
            f'Content-Type: multipart/alternative;\n boundary="{boundary}"\n'
            "MIME-Version: 1.0\n" + "".join(head) + "\n"
            f"--{boundary}\n{_text_part(text, 'plain')}\n"
            f"--{boundary}\n{_text_part(html, 'html')}\n--{boundary}--\n"
        )
    return out.encode("ascii")


def _build_smtputf8(
    sender: str,
    recipient: Recipient,
    subject: str,
    text: str,
    html: str | None,
    message_id: str,
    headers: dict[str, str] | None,
) -> bytes:
    msg = EmailMessage(policy=SMTPUTF8)
    msg["From"] = sender
    msg["To"] = recipient.address
    if "=?" in subject:  # the modern API writes it as it is, and readers would decode it
        msg.set_raw("Subject", Header(subject, "utf-8", header_name="Subject").encode(linesep="\n"))
    else:
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


# A batch has one or two senders: parsing and encoding them once per message showed up in the
# deliverer's profile (~5 % of its CPU under a burst). Bounded, as validate_recipient's cache.
@lru_cache(maxsize=256)
def _from_line(sender: str) -> str:
    """The From header line of ``sender`` (display name RFC 2047 encoded when non-ASCII)."""
    name, address = parseaddr(sender)
    return _fold("From", formataddr((name, address), charset="utf-8") if name else address)


@lru_cache(maxsize=256)  # see _from_line
def sender_address(sender: str) -> str:
    """The envelope sender (MAIL FROM) of a From header value."""
    address = parseaddr(sender)[1]
    if not address or "@" not in address:
        raise InvalidMessage(
            f"invalid from address {sender!r}: configure the provider's or "
            "the template's from_address"
        )
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
