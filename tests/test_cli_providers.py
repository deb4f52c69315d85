"""``mailpipe provider`` through the real CLI against a real Postgres and SMTP server."""

from __future__ import annotations

import datetime as dt

import pytest

from mailpipe.delivery import drain_queue
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer, free_port
from tests.cli_support import add_local_provider, fails, fetch, invoke, ok, ok_json, with_db
from tests.factories import add_template, insert_events

SECRET = "s3cr3t-Pa55word"


def provider_row(url: str, name: str) -> dict:
    rows = fetch(url, "SELECT * FROM smtp_provider_configs WHERE provider_name = %s", (name,))
    assert len(rows) == 1
    return rows[0]


def test_add_show_list_with_masked_credentials(env_database: str, monkeypatch) -> None:
    monkeypatch.setenv("SMTP_PRIMARY_PASSWORD", SECRET)
    result = ok(
        "provider",
        "add",
        "primary",
        "--host",
        "smtp.example.com",
        "--port",
        "465",
        "--tls",
        "implicit",
        "--username",
        "mailer",
        "--password-env",
        "SMTP_PRIMARY_PASSWORD",
        "--from",
        "Shop <shop@example.com>",
        "--priority",
        "5",
        "--per-minute-limit",
        "600",
        "--max-connections",
        "3",
    )
    assert "added provider primary" in result.output
    ok(
        "provider",
        "add",
        "backup",
        "--host",
        "backup.example.com",
        "--secret-block",
        "smtp-backup-password",
        "--username",
        "u",
        "--per-day-limit",
        "none",
    )

    row = provider_row(env_database, "primary")
    assert (
        row["host"],
        row["port"],
        row["tls_mode"],
        row["username"],
        row["priority"],
        row["per_minute_limit"],
        row["max_connections"],
        row["status"],
    ) == ("smtp.example.com", 465, "implicit", "mailer", 5, 600, 3, "active")
    assert row["credentials"] == {"password_env": "SMTP_PRIMARY_PASSWORD"}
    assert provider_row(env_database, "backup")["credentials"] == {
        "secret_block": "smtp-backup-password"
    }

    shown = ok_json("provider", "show", "primary")
    assert shown["password"] == "********"
    assert shown["credentials"].startswith("environment variable SMTP_PRIMARY_PASSWORD")
    listed = ok_json("provider", "list")
    assert [p["name"] for p in listed] == ["primary", "backup"]  # failover order
    table = ok("provider", "show", "primary").output + ok("provider", "list").output
    for output in (table, str(shown), str(listed)):
        assert SECRET not in output


def test_a_literal_password_is_refused(env_database: str) -> None:
    line = fails(
        "provider",
        "add",
        "p",
        "--host",
        "smtp.example.com",
        "--username",
        "u",
        "--password",
        SECRET,
    )
    assert "store it in a Secret block or env var and pass --secret-block/--password-env" in line
    assert SECRET not in line
    assert fetch(env_database, "SELECT * FROM smtp_provider_configs") == []
    ok("provider", "add", "p", "--host", "smtp.example.com")
    assert "--password is refused" in fails("provider", "update", "p", "--password", SECRET)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "70000"], "port 70000 is out of range: use 1-65535"),
        (["--tls", "ssl"], "TLS mode 'ssl' is unknown: use one of implicit, starttls, none"),
        (
            ["--secret-block", "a", "--password-env", "B", "--username", "u"],
            "give --secret-block or --password-env, not both",
        ),
        (["--secret-block", "Bad_Name", "--username", "u"], "Prefect block names use lowercase"),
        (["--password-env", "X"], "a credentials reference needs --username"),
        (["--from", "not an address"], "from address 'not an address' is invalid"),
        (["--from", "Shop <shop@example.com>\r\nBcc: x@evil.com"], "from address"),
        (["--per-minute-limit", "-3"], "--per-minute-limit -3 must be 0 or more"),
        (["--per-hour-limit", "many"], "--per-hour-limit 'many' is not a whole number"),
        (["--max-connections", "0"], "max-connections 0 is out of range"),
    ],
)
def test_bad_settings_are_one_line_with_the_fix(
    env_database: str, args: list[str], expected: str
) -> None:
    line = fails("provider", "add", "p", "--host", "smtp.example.com", *args)
    assert expected in line
    assert fetch(env_database, "SELECT * FROM smtp_provider_configs") == []


def test_update_suspend_resume_remove(env_database: str) -> None:
    ok(
        "provider",
        "add",
        "main",
        "--host",
        "a.example.com",
        "--username",
        "u",
        "--password-env",
        "PW",
        "--per-minute-limit",
        "100",
    )
    assert "already exists" in fails("provider", "add", "main", "--host", "b.example.com")

    ok(
        "provider",
        "update",
        "main",
        "--host",
        "b.example.com",
        "--port",
        "2525",
        "--per-minute-limit",
        "none",
        "--per-hour-limit",
        "5000",
    )
    row = provider_row(env_database, "main")
    assert (
        row["host"],
        row["port"],
        row["per_minute_limit"],
        row["per_hour_limit"],
        row["username"],
        row["credentials"],
    ) == ("b.example.com", 2525, None, 5000, "u", {"password_env": "PW"})  # others kept
    ok("provider", "update", "main", "--no-credentials")
    row = provider_row(env_database, "main")
    assert row["username"] is None and row["credentials"] is None
    assert "out of range" in fails("provider", "update", "main", "--port", "0")
    assert "nothing to change" in fails("provider", "update", "main")
    assert "no provider named 'nope'" in fails("provider", "update", "nope", "--port", "25")

    shown = ok_json("provider", "suspend", "main", "--for", "30m")
    until = dt.datetime.fromisoformat(shown["suspended_until"])
    assert shown["status"] == "suspended"
    assert dt.timedelta(minutes=29) < until - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=30)
    ok("provider", "suspend", "main")
    assert provider_row(env_database, "main")["status"] == "disabled"
    ok("provider", "resume", "main")
    row = provider_row(env_database, "main")
    assert (row["status"], row["suspended_until"], row["consecutive_failures"]) == (
        "active",
        None,
        0,
    )
    assert "not a duration" in fails("provider", "suspend", "main", "--for", "soon")

    assert invoke("provider", "remove", "main", input="n\n").exit_code == 1
    assert provider_row(env_database, "main")
    ok("provider", "remove", "main", "--yes")
    assert fetch(env_database, "SELECT * FROM smtp_provider_configs") == []
    assert "no provider named 'main'" in fails("provider", "remove", "main", "--yes")
    assert "no provider named 'main'" in fails("provider", "show", "main")


def test_add_probe_reports_success_and_failure(env_database: str, smtpd: SMTPTestServer) -> None:
    result = ok(
        "provider",
        "add",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(smtpd.port),
        "--tls",
        "none",
        "--probe",
    )
    assert "probe ok" in result.output
    assert smtpd.connections == 1

    result = invoke(
        "provider",
        "add",
        "dead",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--tls",
        "none",
        "--probe",
    )
    assert result.exit_code == 1
    assert "provider 'dead' was added, but the probe failed (refused)" in result.stderr
    assert provider_row(env_database, "dead")["status"] == "active"


def test_list_counts_todays_sent_and_failed(env_database: str, smtpd_factory) -> None:
    server = smtpd_factory(Behaviour(rcpt_replies={"bad1@example.com": "550 5.1.1 no such user"}))
    add_local_provider(server)

    async def deliver(db) -> None:
        await add_template(db)
        await insert_events(db, 3, prefix="good")
        await insert_events(db, 1, prefix="bad")
        await drain_queue(db, batch_size=10)

    with_db(env_database, deliver)
    [local] = ok_json("provider", "list")
    assert (local["sent_today"], local["failed_today"]) == (3, 1)
    assert "local" in ok("provider", "list").output
