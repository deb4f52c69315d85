"""The bounce mailbox over IMAP, against a real dovecot: genuine DSN and ARF messages
delivered by APPEND, stored in the inbox, applied, flagged \\Seen (or moved, or deleted) only
once stored, a second read a no-op; clear errors for a bad login, an unknown folder, an
unreachable server, an untrusted certificate."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpipe.db import Database
from mailpipe.feedback import imap
from mailpipe.feedback.apply import apply_feedback
from mailpipe.feedback.imap import (
    ImapError,
    ImapFolderMissing,
    ImapLoginRefused,
    ImapMailbox,
    ImapUnreachable,
    import_imap,
)
from mailpipe.feedback.settings import FeedbackSettings, get_feedback_settings
from mailpipe.testing.smtpd import free_port
from tests.cli_support import fails, ok_json
from tests.feedback.dovecot import Dovecot
from tests.feedback.support import add_sent_message, inbox

FIXTURES = Path(__file__).parent / "fixtures"
BOUNCE_ID = "<7d8f2c1e-0b9a-4f5e-9c3d-2a1b0c9d8e7f@mail.example.com>"
COMPLAINT_ID = "<8787KJKJ3K4J3K4J3K4J3.mail@example.net>"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def crlf(raw: bytes) -> bytes:
    """The message as IMAP carries it (APPEND turns bare LF into CRLF)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def sent(db: Database, recipient: str, message_id: str) -> dict:
    """A sent message whose Message-ID the fixture's report quotes."""
    row = await add_sent_message(db, recipient)
    await db.execute(
        "UPDATE smtp_delivery_confirmations SET message_id = %s WHERE id = %s",
        (message_id, row["confirmation_id"]),
    )
    return row


def mailbox(dovecot: Dovecot, user: str, **kw: object) -> ImapMailbox:
    values: dict = {
        "host": "127.0.0.1",
        "port": dovecot.imaps_port,
        "security": "tls",
        "ca_file": dovecot.ca_file,
        "username": user,
        "password": dovecot.users[user],
        "timeout": 30.0,
    }
    values.update(kw)
    return ImapMailbox(**values)


async def test_reports_are_stored_applied_flagged_seen_and_read_once(
    db: Database, dovecot: Dovecot
) -> None:
    bounced = await sent(db, "nosuchuser@example.net", BOUNCE_ID)
    complained = await sent(db, "user@example.com", COMPLAINT_ID)
    user, _ = dovecot.add_user()
    reports = [fixture(n) for n in ("postfix-bounce.eml", "rfc5965-abuse.eml", "autoreply.eml")]
    dovecot.append(user, *reports)
    assert dovecot.flags(user) == [set(), set(), set()]

    result = await import_imap(db, mailbox(dovecot, user))
    assert (result.messages, result.added, result.duplicates, result.invalid) == (3, 3, 0, 1)
    rows = await inbox(db)
    assert [(r["provider"], r["state"], r["kind"], r["verification"]) for r in rows] == [
        ("dsn", "received", "hard_bounce", "mailbox"),
        ("arf", "received", "complaint", "mailbox"),
        ("dsn", "invalid", None, "mailbox"),
    ]
    # Stored verbatim: the bytes the IMAP server holds.
    assert [r["raw"].encode() for r in rows] == [crlf(r) for r in reports]
    assert dovecot.flags(user) == [{r"\Seen"}] * 3

    applied = await apply_feedback(db)
    assert (applied.applied, applied.status_changes, applied.suppressions) == (2, 2, 2)
    statuses = await db.fetch_all("SELECT id, status FROM smtp_delivery_confirmations ORDER BY id")
    assert [(r["id"], r["status"]) for r in statuses] == [
        (bounced["confirmation_id"], "bounced"),
        (complained["confirmation_id"], "complained"),
    ]
    suppressed = await db.fetch_all("SELECT address, reason FROM email_suppressions ORDER BY 1")
    assert [(r["address"], r["reason"]) for r in suppressed] == [
        ("nosuchuser@example.net", "hard_bounce"),
        ("user@example.com", "complaint"),
    ]

    again = await import_imap(db, mailbox(dovecot, user))
    assert (again.messages, again.added) == (0, 0)

    # A crash after storing but before flagging: the re-read stores nothing twice.
    dovecot.unsee(user)
    reread = await import_imap(db, mailbox(dovecot, user))
    assert (reread.messages, reread.added, reread.duplicates) == (3, 0, 3)
    assert len(await inbox(db)) == 3
    assert dovecot.flags(user) == [{r"\Seen"}] * 3


@pytest.mark.parametrize("after", ["move", "delete"])
async def test_starttls_then_move_or_delete_once_stored(
    db: Database, dovecot: Dovecot, after: str
) -> None:
    user, _ = dovecot.add_user()
    dovecot.create_folder(user, "Processed bounces")
    dovecot.append(user, fixture("postfix-bounce.eml"), fixture("rfc3464-multi-recipient.eml"))
    box = mailbox(
        dovecot,
        user,
        port=dovecot.imap_port,
        security="starttls",
        after=after,
        move_to="Processed bounces" if after == "move" else None,
    )
    result = await import_imap(db, box)
    assert (result.messages, result.added) == (2, 4)
    assert dovecot.flags(user) == []
    moved = dovecot.flags(user, "Processed bounces")
    assert moved == ([{r"\Seen"}] * 2 if after == "move" else [])
    assert (await import_imap(db, box)).messages == 0


@pytest.mark.parametrize("missing", [{"MOVE"}, {"MOVE", "UIDPLUS"}])
async def test_servers_without_move_or_uidplus_get_copy_and_expunge(
    db: Database, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, missing: set[str]
) -> None:
    """Older servers: COPY, flag \\Deleted, then UID EXPUNGE (or EXPUNGE without UIDPLUS)."""
    opened = imap._Session.open

    def open_without(self: imap._Session) -> None:
        opened(self)
        self.capabilities -= missing  # as if the server had not announced them

    monkeypatch.setattr(imap._Session, "open", open_without)
    user, _ = dovecot.add_user()
    dovecot.create_folder(user, "Done")
    dovecot.append(user, fixture("postfix-bounce.eml"), fixture("rfc5965-abuse.eml"))
    box = mailbox(dovecot, user, after="move", move_to="Done")
    assert (await import_imap(db, box)).added == 2
    assert dovecot.flags(user) == []
    assert dovecot.flags(user, "Done") == [{r"\Seen"}] * 2


async def test_plain_on_loopback_and_the_limit(db: Database, dovecot: Dovecot) -> None:
    user, _ = dovecot.add_user()
    dovecot.append(user, fixture("postfix-bounce.eml"), fixture("rfc5965-abuse.eml"))
    box = mailbox(dovecot, user, port=dovecot.imap_port, security="plain", ca_file=None)
    first = await import_imap(db, box, limit=1)
    assert first.messages == 1 and dovecot.flags(user) == [{r"\Seen"}, set()]
    assert (await import_imap(db, box)).messages == 1
    assert dovecot.flags(user) == [{r"\Seen"}] * 2


async def test_bad_password_is_a_clear_error_without_the_password(
    db: Database, dovecot: Dovecot
) -> None:
    user, _ = dovecot.add_user()
    dovecot.append(user, fixture("postfix-bounce.eml"))
    wrong = "not-the-password-42"
    with pytest.raises(ImapLoginRefused) as caught:
        await import_imap(db, mailbox(dovecot, user, password=wrong))
    message = str(caught.value)
    assert f"refused the login of {user!r}" in message
    assert "MAILPIPE_FEEDBACK_IMAP_PASSWORD" in message and wrong not in message
    assert await inbox(db) == [] and dovecot.flags(user) == [set()]


async def test_unknown_folders_are_named(db: Database, dovecot: Dovecot) -> None:
    user, _ = dovecot.add_user()
    with pytest.raises(ImapFolderMissing, match=r"folder 'Bounces' does not exist .*INBOX"):
        await import_imap(db, mailbox(dovecot, user, folder="Bounces"))
    with pytest.raises(ImapFolderMissing, match="folder 'Done' to move stored messages to"):
        await import_imap(db, mailbox(dovecot, user, after="move", move_to="Done"))


async def test_unreachable_server_and_untrusted_certificate(db: Database, dovecot: Dovecot) -> None:
    user, _ = dovecot.add_user()
    port = free_port()
    with pytest.raises(ImapUnreachable, match=f"cannot reach IMAP server 127.0.0.1:{port}"):
        await import_imap(db, mailbox(dovecot, user, port=port))
    with pytest.raises(ImapUnreachable, match="TLS with IMAP server .* failed .*CA_FILE"):
        await import_imap(db, mailbox(dovecot, user, ca_file=None))


def test_settings_that_would_leak_or_cannot_work_are_refused() -> None:
    with pytest.raises(ImapError, match="unencrypted"):
        ImapMailbox("imap.example.com", "u", "p", security="plain")
    with pytest.raises(ImapError, match="--move-to"):
        ImapMailbox("imap.example.com", "u", "p", after="move")
    assert "p4ss" not in repr(ImapMailbox("imap.example.com", "u", "p4ss"))


async def test_password_comes_from_the_environment_or_is_asked_for() -> None:
    settings = FeedbackSettings(imap_host="imap.example.com", imap_username="bounces")
    with pytest.raises(ImapError, match="MAILPIPE_FEEDBACK_IMAP_PASSWORD"):
        await ImapMailbox.from_settings(settings)
    settings = FeedbackSettings(
        imap_host="imap.example.com", imap_username="bounces", imap_password="s3cret"
    )
    box = await ImapMailbox.from_settings(settings, folder="Bounces", port=None)
    assert (box.password, box.folder, box.port, box.address) == (
        "s3cret",
        "Bounces",
        None,
        "imap.example.com:993",
    )


def test_cli_reads_the_mailbox_with_the_password_from_the_environment(
    env_database: str, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, password = dovecot.add_user()
    dovecot.append(user, fixture("postfix-bounce.eml"))
    monkeypatch.setenv("MAILPIPE_FEEDBACK_IMAP_PASSWORD", password)
    get_feedback_settings.cache_clear()
    try:
        args = ["feedback", "imap", "--host", "127.0.0.1", "--user", user]
        args += ["--port", str(dovecot.imaps_port), "--ca-file", str(dovecot.ca_file)]
        assert ok_json(*args)["added"] == 1
        assert ok_json(*args)["messages"] == 0
        monkeypatch.setenv("MAILPIPE_FEEDBACK_IMAP_PASSWORD", "wrong-" + password)
        get_feedback_settings.cache_clear()
        error = fails(*args)
        assert "refused the login" in error and password not in error
        assert "--after 'later'" in fails(*args, "--after", "later")
    finally:
        get_feedback_settings.cache_clear()


async def test_the_feedback_run_reads_a_configured_mailbox_and_survives_a_bad_one(
    db: Database, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """process_email_feedback's run reads MAILPIPE_FEEDBACK_IMAP_* first (no separate reader
    to schedule); a mailbox it cannot read is reported and the rest is applied all the same."""
    from mailpipe.feedback.runs import apply_run, log_line, markdown

    bounced = await sent(db, "nosuchuser@example.net", BOUNCE_ID)
    user, password = dovecot.add_user()
    dovecot.append(user, fixture("postfix-bounce.eml"))
    settings = {
        "HOST": "127.0.0.1",
        "PORT": str(dovecot.imaps_port),
        "CA_FILE": str(dovecot.ca_file),
        "USERNAME": user,
        "PASSWORD": password,
    }
    for key, value in settings.items():
        monkeypatch.setenv(f"MAILPIPE_FEEDBACK_IMAP_{key}", value)
    get_feedback_settings.cache_clear()
    try:
        summary = await apply_run(db=db)
        assert summary["mailbox"] == {
            "messages": 1,
            "added": 1,
            "duplicates": 0,
            "invalid": 0,
            "error": None,
        }
        assert summary["applied"] == 1
        status = await db.fetch_value(
            "SELECT status FROM smtp_delivery_confirmations WHERE id = %s",
            (bounced["confirmation_id"],),
        )
        assert status == "bounced"
        assert "bounce mailbox: read 1 message(s): 1 event(s) stored" in log_line(summary)

        monkeypatch.setenv("MAILPIPE_FEEDBACK_IMAP_PASSWORD", "wrong-" + password)
        get_feedback_settings.cache_clear()
        failed = await apply_run(db=db)  # does not raise
        assert "refused the login" in failed["mailbox"]["error"]
        assert password not in failed["mailbox"]["error"]
        assert "Bounce mailbox (IMAP): not read (" in markdown(failed)
    finally:
        get_feedback_settings.cache_clear()
