"""Bounce and complaint emails: DSN (RFC 3464) and ARF (RFC 5965) reports, and VERP.

A bounce mailbox receives delivery status notifications (``multipart/report;
report-type=delivery-status``: one block per recipient with Action, Status, Diagnostic-Code) and
feedback-loop complaints (``multipart/report; report-type=feedback-report``). Both quote the
original message (or its headers), whose Message-ID is ours. With a VERP return path
(``bounces+<local>=<domain>@bounce.example.com``, our Message-ID ``<local@domain>`` encoded)
a bounce maps to its message even when it quotes nothing. Parsed with the standard ``email``
package; anything else (an autoresponder, a non-standard bounce) is kept as invalid for
inspection.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import mailbox
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

from mailpipe.db import Database
from mailpipe.feedback.inbox import store_events
from mailpipe.feedback.providers.base import body_digest, smtp_code_of, text
from mailpipe.feedback.vocabulary import (
    FeedbackError,
    FeedbackEvent,
    FeedbackKind,
    FeedbackState,
    Verification,
    normalise_message_id,
)

#: Permanent status codes that are really temporary: the mailbox is full, or the message was
#: too big for it today (RFC 3463 X.2.2, X.3.4 often used so). They count as soft bounces.
_SOFT_PERMANENT = {"5.2.2", "5.3.4"}
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,62}$")
_RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")


def verp_return_path(message_id: str, domain: str, prefix: str = "bounces") -> str:
    """The VERP return path of a message: ``<prefix>+<local>=<msgid domain>@domain``, or
    ``<prefix>+<local>@domain`` when that would be longer than an address's 64-character local
    part (then the Message-ID domain is read from the database's
    ``mailpipe.message_id_domain``, the one ``new_message_id()`` uses)."""
    normalised = normalise_message_id(message_id) or ""
    local, _, message_domain = normalised.strip("<>").partition("@")
    if not _TOKEN.match(local) or "=" in local or not message_domain:
        raise ValueError(
            f"Message-ID {message_id!r} has a local part unfit for an address: VERP needs "
            "letters, digits and . _ -"
        )
    full = f"{prefix}+{local}={message_domain}"
    return f"{full if len(full) <= 64 else f'{prefix}+{local}'}@{domain}"


def verp_token(address: str | None, prefix: str = "bounces") -> str | None:
    """The token of a VERP address ``<prefix>+<token>@domain`` (None for any other address)."""
    if not address:
        return None
    local, at, _ = address.strip().strip("<>").rpartition("@")
    head, plus, token = local.partition("+")
    if not at or not plus or head.lower() != prefix.lower() or not _TOKEN.match(token):
        return None
    return token


def _verp_token_of(report: Message, prefix: str) -> str | None:
    for header in _RECIPIENT_HEADERS:
        for _, address in getaddresses(report.get_all(header, [])):
            token = verp_token(address, prefix)
            if token:
                return token
    return None


def _fields(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [p for p in payload if isinstance(p, Message)]
        if blocks:
            return blocks
    raw = part.get_payload(decode=True) or b""
    text_body = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    return [HeaderParser().parsestr(block + "\n") for block in re.split(r"\n\s*\n", text_body)]


def _original_headers(report: Message) -> Message | None:
    """The original message (or its headers) quoted by a report."""
    for part in report.walk():
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/rfc822-headers"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0]
        if kind == "text/rfc822-headers":
            raw = part.get_payload(decode=True) or b""
            return HeaderParser().parsestr(raw.decode("utf-8", errors="replace"))
    return None


def _address(field: str | None) -> str | None:
    # "rfc822; user@example.com" (address type; address), maybe in angle brackets
    if not field:
        return None
    value = text(field.partition(";")[2] if ";" in field else field)
    return value.strip("<>") if value else None


def _report_id(report: Message, raw: bytes) -> str:
    return text(report.get("Message-ID")) or f"sha256:{body_digest(raw)}"


def dsn_kind(action: str, status: str | None) -> FeedbackKind | None:
    """The kind of one DSN recipient block (None: an action RFC 3464 does not define)."""
    action = action.strip().lower()
    if action == "failed":
        if status and (status.startswith("4.") or status in _SOFT_PERMANENT):
            return FeedbackKind.SOFT_BOUNCE
        return FeedbackKind.HARD_BOUNCE
    if action == "delayed":
        return FeedbackKind.DEFERRED
    if action in ("delivered", "relayed", "expanded"):
        return FeedbackKind.DELIVERED
    return None


def parse_report(raw: bytes, *, verp_prefix: str = "bounces") -> list[FeedbackEvent]:
    """The events of one bounce-mailbox message (DSN or ARF); anything else is one invalid
    event kept for inspection."""
    report = email.message_from_bytes(raw, policy=email.policy.compat32)
    report_type = (report.get_param("report-type") or "").lower()
    if report.get_content_type() == "multipart/report" and report_type == "delivery-status":
        return _parse_dsn(report, raw, verp_prefix)
    if report.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return _parse_arf(report, raw, verp_prefix)
    return [
        _kept(
            "dsn",
            report,
            raw,
            "not a DSN (multipart/report; report-type=delivery-status) nor an ARF report "
            f"(feedback-report): {report.get_content_type()}",
        )
    ]


def _kept(provider: str, report: Message, raw: bytes, reason: str) -> FeedbackEvent:
    return FeedbackEvent(
        provider=provider,
        provider_event_id=_report_id(report, raw),
        kind=None,
        provider_kind=report.get_content_type(),
        verification=Verification.MAILBOX,
        state=FeedbackState.INVALID,
        raw=raw.decode("utf-8", errors="replace"),
        content_type=report.get("Content-Type"),
        error=reason,
    )


def _occurred(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _parse_dsn(report: Message, raw: bytes, verp_prefix: str) -> list[FeedbackEvent]:
    status_part = next(
        (p for p in report.walk() if p.get_content_type() == "message/delivery-status"), None
    )
    if status_part is None:
        return [_kept("dsn", report, raw, "DSN without a message/delivery-status part")]
    blocks = _fields(status_part)
    per_message, recipients = blocks[0], [b for b in blocks[1:] if b.get("Action")]
    original = _original_headers(report)
    message_id = text(original.get("Message-ID")) if original is not None else None
    token = _verp_token_of(report, verp_prefix)
    # The operator's own Postfix names the message by the queue id it answered "queued as
    # <id>" with, stored on the confirmation at send time. Short queue ids are reused over
    # time, so that id is the key only when the DSN quotes neither our Message-ID nor a VERP
    # return path.
    queue_id = text(per_message.get("X-Postfix-Queue-ID")) if not (message_id or token) else None
    report_id = _report_id(report, raw)
    text_raw = raw.decode("utf-8", errors="replace")
    if not recipients:
        return [_kept("dsn", report, raw, "DSN with no per-recipient block (Action:)")]
    events = []
    for block in recipients:
        recipient = _address(block.get("Original-Recipient")) or _address(
            block.get("Final-Recipient")
        )
        action = str(block.get("Action", ""))
        # "5.0.0 (permanent failure)": the code, without its comment.
        status = (text(block.get("Status")) or "").split(" ")[0] or None
        kind = dsn_kind(action, status)
        diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split()) or None
        code_text = diagnostic.partition(";")[2] if diagnostic and ";" in diagnostic else diagnostic
        events.append(
            FeedbackEvent(
                provider="dsn",
                provider_event_id=f"{report_id}:{recipient}",
                kind=kind,
                provider_kind=f"{action.lower()}/{status}" if status else action.lower(),
                verification=Verification.MAILBOX,
                state=FeedbackState.RECEIVED if kind else FeedbackState.INVALID,
                error=None if kind else f"DSN Action {action!r} is not one RFC 3464 defines",
                recipient=recipient,
                message_id=message_id,
                provider_message_id=queue_id,
                verp_token=token,
                reason=diagnostic,
                smtp_code=smtp_code_of(code_text),
                enhanced_status=status,
                occurred_at=_occurred(block.get("Last-Attempt-Date"))
                or _occurred(per_message.get("Arrival-Date"))
                or _occurred(report.get("Date")),
                raw=text_raw,
                content_type=report.get("Content-Type"),
            )
        )
    return events


#: ARF Feedback-Type values that are complaints (RFC 5965 section 7.3); others are ignored.
_COMPLAINT_TYPES = {"abuse", "fraud", "virus", "other"}


def _parse_arf(report: Message, raw: bytes, verp_prefix: str) -> list[FeedbackEvent]:
    part = next(
        (p for p in report.walk() if p.get_content_type() == "message/feedback-report"), None
    )
    if part is None:
        return [_kept("arf", report, raw, "ARF report without a message/feedback-report part")]
    fields = _fields(part)[0]
    feedback_type = str(fields.get("Feedback-Type", "")).strip().lower()
    if not feedback_type:
        return [_kept("arf", report, raw, "ARF report without Feedback-Type")]
    original = _original_headers(report)
    rcpt = getaddresses(fields.get_all("Original-Rcpt-To", []))
    recipient = text(rcpt[0][1]) if rcpt else None
    if recipient is None and original is not None:
        found = getaddresses(original.get_all("To", []))
        recipient = text(found[0][1]) if found else None
    kind = FeedbackKind.COMPLAINT if feedback_type in _COMPLAINT_TYPES else None
    return [
        FeedbackEvent(
            provider="arf",
            provider_event_id=f"{_report_id(report, raw)}:{recipient}",
            kind=kind,
            provider_kind=feedback_type,
            verification=Verification.MAILBOX,
            recipient=recipient,
            message_id=text(original.get("Message-ID")) if original is not None else None,
            verp_token=_verp_token_of(report, verp_prefix),
            reason=text(fields.get("User-Agent")),
            occurred_at=_occurred(fields.get("Arrival-Date")) or _occurred(report.get("Date")),
            raw=raw.decode("utf-8", errors="replace"),
            content_type=report.get("Content-Type"),
        )
    ]


@dataclass
class ImportResult:
    """What an import stored: messages read, events added, repeats, invalid ones."""

    messages: int = 0
    added: int = 0
    duplicates: int = 0
    invalid: int = 0

    def add(self, other: ImportResult) -> None:
        """Add another import's counts to these."""
        self.messages += other.messages
        self.added += other.added
        self.duplicates += other.duplicates
        self.invalid += other.invalid

    def describe(self) -> str:
        """One line for people: what was read and what was stored."""
        return (
            f"read {self.messages} message(s): {self.added} event(s) stored, "
            f"{self.duplicates} already stored, {self.invalid} kept as invalid"
        )


async def import_messages(
    db: Database, messages: Iterable[bytes], *, verp_prefix: str = "bounces"
) -> ImportResult:
    """Parse and store bounce-mailbox messages (each message's events in one INSERT)."""
    result = ImportResult()
    for raw in messages:
        events = parse_report(raw, verp_prefix=verp_prefix)
        stored = await store_events(db, events)
        result.messages += 1
        result.added += stored.added
        result.duplicates += stored.duplicates
        result.invalid += sum(e.state is FeedbackState.INVALID for e in events)
    return result


async def import_files(
    db: Database, paths: Sequence[Path], *, verp_prefix: str = "bounces"
) -> ImportResult:
    """``mailpipe feedback import FILE.eml ...``: store the reports in these files."""
    return await import_messages(db, (p.read_bytes() for p in paths), verp_prefix=verp_prefix)


async def import_maildir(db: Database, path: Path, *, verp_prefix: str = "bounces") -> ImportResult:
    """Store every new message of a Maildir, then move it to ``cur/`` marked seen (a message is
    moved only once stored: a crash re-reads it, and the inbox ignores the repeat)."""
    if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
        raise FeedbackError(
            f"{path} is not a Maildir (it needs cur/, new/ and tmp/): give .eml files or a "
            "Maildir folder"
        )
    box = mailbox.Maildir(path, factory=None, create=False)
    result = ImportResult()
    for key in list(box.iterkeys()):
        msg = box.get_message(key)
        if msg.get_subdir() == "cur" and "S" in msg.get_flags():
            continue
        result.add(await import_messages(db, [box.get_bytes(key)], verp_prefix=verp_prefix))
        msg.set_subdir("cur")
        msg.add_flag("S")
        box[key] = msg
    return result
