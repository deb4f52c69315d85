"""DSN (RFC 3464) and ARF (RFC 5965) messages parsed end to end, from the RFCs' examples,
Postfix's bounce format and genuine DSNs a real Postfix wrote (fixtures/postfix-genuine);
VERP return paths; Maildir import."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest

from mailpipe.db import Database
from mailpipe.feedback.apply import apply_feedback
from mailpipe.feedback.dsn import (
    import_files,
    import_maildir,
    parse_report,
    verp_return_path,
    verp_token,
)
from mailpipe.feedback.vocabulary import FeedbackKind, FeedbackState
from tests.feedback.support import add_sent_message, inbox

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


GENUINE = FIXTURES / "postfix-genuine"


def test_genuine_postfix_dsns_are_read_like_the_crafted_ones() -> None:
    events = {
        name: parse_report((GENUINE / f"{name}.eml").read_bytes())
        for name in ("remote-550", "local-unknown-user", "delayed-451")
    }
    assert {name: len(found) for name, found in events.items()} == dict.fromkeys(events, 1)
    remote, local, delayed = (found[0] for found in events.values())
    assert (remote.kind, remote.recipient, remote.smtp_code, remote.enhanced_status) == (
        FeedbackKind.HARD_BOUNCE,
        "nosuchuser@example.net",
        550,
        "5.1.1",
    )
    # A folded Diagnostic-Code is read whole.
    assert remote.reason == (
        "smtp; 550 5.1.1 <nosuchuser@example.net>: Recipient address rejected: "
        "User unknown in virtual mailbox table"
    )
    assert remote.message_id == "<ad05d513-cf88-4aac-9299-321b6c8335c4@mail.example.com>"
    assert remote.verp_token == "ad05d513-cf88-4aac-9299-321b6c8335c4=mail.example.com"
    # Local delivery's own diagnostic carries no SMTP code; the status still says permanent.
    assert (local.kind, local.recipient, local.smtp_code, local.enhanced_status) == (
        FeedbackKind.HARD_BOUNCE,
        "ghost@bounce.example.com",
        None,
        "5.1.1",
    )
    assert local.reason == 'X-Postfix; unknown user: "ghost"'
    assert (delayed.kind, delayed.recipient, delayed.smtp_code, delayed.enhanced_status) == (
        FeedbackKind.DEFERRED,
        "slow@example.net",
        451,
        "4.2.0",
    )
    # Headers only (text/rfc822-headers) still give our Message-ID.
    assert delayed.message_id == "<b422701d-a1f3-422d-8f56-34d8757062ce@mail.example.com>"
    assert {e.state for e in (remote, local, delayed)} == {FeedbackState.RECEIVED}


async def test_genuine_postfix_dsns_from_a_maildir_bounce_and_suppress(
    db: Database, tmp_path: Path
) -> None:
    for recipient, message_id in (
        ("nosuchuser@example.net", "<ad05d513-cf88-4aac-9299-321b6c8335c4@mail.example.com>"),
        ("ghost@bounce.example.com", "<79054796-cb99-4055-85f0-a973f63d59b6@mail.example.com>"),
        ("slow@example.net", "<b422701d-a1f3-422d-8f56-34d8757062ce@mail.example.com>"),
    ):
        row = await add_sent_message(db, recipient)
        await db.execute(
            "UPDATE smtp_delivery_confirmations SET message_id = %s WHERE id = %s",
            (message_id, row["confirmation_id"]),
        )
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    for path in sorted(GENUINE.glob("*.eml")):
        box.add(path.read_bytes())
    stored = await import_maildir(db, tmp_path / "bounces")
    assert (stored.messages, stored.added, stored.invalid) == (3, 3, 0)
    applied = await apply_feedback(db)
    assert (applied.applied, applied.status_changes, applied.suppressions) == (3, 2, 2)
    statuses = {
        r["recipient_email"]: r["status"]
        for r in await db.fetch_all(
            "SELECT recipient_email, status FROM smtp_delivery_confirmations"
        )
    }
    assert statuses == {
        "nosuchuser@example.net": "bounced",
        "ghost@bounce.example.com": "bounced",
        "slow@example.net": "accepted",  # a delay warning changes nothing
    }
    suppressed = await db.fetch_all("SELECT address, reason FROM email_suppressions ORDER BY 1")
    assert [(r["address"], r["reason"]) for r in suppressed] == [
        ("ghost@bounce.example.com", "hard_bounce"),
        ("nosuchuser@example.net", "hard_bounce"),
    ]
