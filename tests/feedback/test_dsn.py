"""DSN (RFC 3464) and ARF (RFC 5965) messages parsed end to end, from the RFCs' examples and
Postfix's bounce format; VERP return paths; Maildir import."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest

from mailpipe.db import Database
from mailpipe.feedback.dsn import (
    import_files,
    import_maildir,
    parse_report,
    verp_return_path,
    verp_token,
)
from mailpipe.feedback.vocabulary import FeedbackKind, FeedbackState
from tests.feedback.support import inbox

FIXTURES = Path(__file__).parent / "fixtures"
POSTFIX_TOKEN = "7d8f2c1e-0b9a-4f5e-9c3d-2a1b0c9d8e7f"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_rfc3464_simple_dsn_is_a_soft_bounce_of_the_quoted_message() -> None:
    [event] = parse_report(fixture("rfc3464-simple.eml"))
    assert event.provider == "dsn" and event.kind is FeedbackKind.SOFT_BOUNCE
    assert event.recipient == "louisl@larry.slip.umd.edu"
    assert event.message_id == "<rfc3464-simple@mailpipe.local>"
    assert (event.enhanced_status, event.smtp_code) == ("4.0.0", 426)
    assert event.reason == "smtp; 426 connection timed out"
    assert event.provider_event_id == "<199407072116.RAA14128@CS.UTK.EDU>:louisl@larry.slip.umd.edu"
    assert event.occurred_at is not None and event.occurred_at.year == 1994


def test_rfc3464_multi_recipient_dsn_gives_one_event_per_recipient() -> None:
    events = parse_report(fixture("rfc3464-multi-recipient.eml"))
    assert [(e.recipient, e.kind, e.enhanced_status) for e in events] == [
        ("arathib@vnet.ibm.com", FeedbackKind.HARD_BOUNCE, "5.0.0"),
        ("johnh@hpnjld.njd.hp.com", FeedbackKind.DEFERRED, "4.0.0"),
        ("wsnell@sdcc13.ucsd.edu", FeedbackKind.HARD_BOUNCE, "5.0.0"),
    ]
    # A folded Diagnostic-Code is read whole; the quoted original had no Message-ID.
    assert events[0].reason == "smtp; 550 'arathib@vnet.IBM.COM' is not a registered gateway user"
    assert events[0].smtp_code == 550
    assert {e.message_id for e in events} == {None}
    assert len({e.provider_event_id for e in events}) == 3


def test_postfix_bounce_carries_message_id_and_verp_token() -> None:
    [event] = parse_report(fixture("postfix-bounce.eml"))
    assert event.kind is FeedbackKind.HARD_BOUNCE
    assert event.recipient == "nosuchuser@example.net"
    assert event.message_id == f"<{POSTFIX_TOKEN}@mail.example.com>"
    assert event.verp_token == POSTFIX_TOKEN
    assert (event.enhanced_status, event.smtp_code) == ("5.1.1", 550)
    assert "User unknown in virtual mailbox table" in (event.reason or "")


def test_rfc5965_abuse_report_is_a_complaint() -> None:
    [event] = parse_report(fixture("rfc5965-abuse.eml"))
    assert (event.provider, event.kind, event.provider_kind) == (
        "arf",
        FeedbackKind.COMPLAINT,
        "abuse",
    )
    assert event.recipient == "user@example.com"
    assert event.message_id == "<8787KJKJ3K4J3K4J3K4J3.mail@example.net>"
    assert event.reason == "SomeGenerator/1.0"


def test_not_spam_report_is_ignored() -> None:
    raw = fixture("rfc5965-abuse.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    [event] = parse_report(raw)
    assert event.kind is None and event.state is FeedbackState.IGNORED


def test_anything_else_is_kept_as_invalid_with_the_reason() -> None:
    [event] = parse_report(fixture("autoreply.eml"))
    assert event.state is FeedbackState.INVALID
    assert "not a DSN" in (event.error or "") and "text/plain" in (event.error or "")
    assert event.provider_event_id == "<ooo-1@example.org>"


def test_verp_return_path_round_trip() -> None:
    path = verp_return_path(f"<{POSTFIX_TOKEN}@mail.example.com>", "bounce.example.com")
    assert path == f"bounces+{POSTFIX_TOKEN}=mail.example.com@bounce.example.com"
    assert verp_token(path) == f"{POSTFIX_TOKEN}=mail.example.com"
    assert verp_token(f"<{path}>") == f"{POSTFIX_TOKEN}=mail.example.com"
    # Past 64 characters the Message-ID domain is left out (the database's own is assumed).
    long_domain = "mail.a-rather-long-sending-domain.example.com"
    path = verp_return_path(f"<{POSTFIX_TOKEN}@{long_domain}>", "b.example.com")
    assert path == f"bounces+{POSTFIX_TOKEN}@b.example.com"
    assert verp_token("shop@example.com") is None
    assert verp_token(f"other+{POSTFIX_TOKEN}@bounce.example.com") is None
    with pytest.raises(ValueError, match="VERP needs"):
        verp_return_path("<a b@example.com>", "bounce.example.com")


async def test_import_files_stores_each_event_once(db: Database) -> None:
    paths = [FIXTURES / n for n in ("postfix-bounce.eml", "rfc5965-abuse.eml", "autoreply.eml")]
    first = await import_files(db, paths)
    assert (first.messages, first.added, first.duplicates, first.invalid) == (3, 3, 0, 1)
    again = await import_files(db, paths)
    assert (again.added, again.duplicates) == (0, 3)
    rows = await inbox(db)
    assert [(r["provider"], r["state"], r["kind"], r["verification"]) for r in rows] == [
        ("dsn", "received", "hard_bounce", "mailbox"),
        ("arf", "received", "complaint", "mailbox"),
        ("dsn", "invalid", None, "mailbox"),
    ]
    assert rows[0]["raw"].startswith("Return-Path: <>")


async def test_maildir_new_messages_are_stored_then_marked_seen(
    db: Database, tmp_path: Path
) -> None:
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(fixture("postfix-bounce.eml"))
    box.add(fixture("rfc3464-multi-recipient.eml"))
    result = await import_maildir(db, tmp_path / "bounces")
    assert (result.messages, result.added) == (2, 4)
    assert sorted(p.parent.name for p in (tmp_path / "bounces").glob("*/*")) == ["cur", "cur"]
    assert all(m.get_flags() == "S" for m in mailbox.Maildir(tmp_path / "bounces").values())
    again = await import_maildir(db, tmp_path / "bounces")
    assert again.messages == 0 and len(await inbox(db)) == 4
