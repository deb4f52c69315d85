"""``mailpipe template`` through the real CLI; ``render`` against what the flow really sends."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mailpipe.delivery import drain_queue
from mailpipe.testing.smtpd import SMTPTestServer
from tests.cli_support import (
    add_local_provider,
    execute,
    fails,
    fetch,
    invoke,
    ok,
    ok_json,
    with_db,
)
from tests.factories import insert_events


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def without_date(message: bytes) -> bytes:
    """The message minus its Date header line (the one line a preview cannot know)."""
    lines = message.splitlines(keepends=True)
    dates = [i for i, line in enumerate(lines) if line.startswith(b"Date: ")]
    assert len(dates) == 1
    return b"".join(lines[: dates[0]] + lines[dates[0] + 1 :])


def on_the_wire(message: bytes) -> bytes:
    """What SMTP DATA carries for these bytes: CRLF line endings (RFC 5321 2.3.8)."""
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_add_update_show_list_remove(env_database: str, tmp_path: Path) -> None:
    text = write(tmp_path, "welcome.txt", "Hello {{ name }},\nwelcome to [the shop].\n")
    html = write(tmp_path, "welcome.html", "<p>Hello {{ name }}</p>\n")
    ok(
        "template",
        "add",
        "welcome",
        "--subject",
        "Welcome {{ name }}",
        "--text-file",
        text,
        "--html-file",
        html,
        "--from",
        "Shop <shop@example.com>",
    )
    assert "exists: change it with `mailpipe template update welcome" in fails(
        "template", "add", "welcome", "--subject", "x", "--text", "y"
    )

    result = ok("template", "update", "welcome", "--subject", "Hi {{ name }}", "--no-html")
    assert "now v2 (v1 kept)" in result.output
    shown = ok_json("template", "show", "welcome")
    assert (shown["version"], shown["subject"], shown["html_body"], shown["from_address"]) == (
        2,
        "Hi {{ name }}",
        None,
        "Shop <shop@example.com>",
    )
    assert shown["text_body"] == "Hello {{ name }},\nwelcome to [the shop].\n"
    assert [(v["version"], v["active"]) for v in shown["versions"]] == [(2, True), (1, False)]
    old = ok_json("template", "show", "welcome", "--version", "1")
    assert (old["subject"], old["html_body"]) == ("Welcome {{ name }}", "<p>Hello {{ name }}</p>\n")
    assert "welcome to [the shop]." in ok("template", "show", "welcome").output

    ok("template", "add", "receipt", "--subject", "Receipt", "--text", "Total {{ total }}")
    listed = ok_json("template", "list")
    assert [(t["template_key"], t["active_version"], t["versions"]) for t in listed] == [
        ("receipt", 1, 1),
        ("welcome", 2, 2),
    ]

    ok("enqueue", "--to", "ann@example.com", "--template", "receipt", "--data", '{"total": 3}')
    line = fails("template", "remove", "receipt")
    assert "1 queued event(s) use template 'receipt'" in line
    assert "mailpipe queue cancel --template receipt" in line
    ok("queue", "cancel", "--template", "receipt")
    ok("template", "remove", "receipt")
    assert [t["template_key"] for t in ok_json("template", "list")] == ["welcome"]
    removed = [t for t in ok_json("template", "list", "--all") if t["template_key"] == "receipt"]
    assert removed[0]["active_version"] is None and removed[0]["versions"] == 1
    assert "no active template 'receipt'" in fails("template", "show", "receipt")
    ok("template", "add", "receipt", "--subject", "Receipt", "--text", "again")
    assert ok_json("template", "show", "receipt")["version"] == 2


def test_bad_input_is_one_line(env_database: str, tmp_path: Path) -> None:
    assert "has a syntax error on line 1" in fails(
        "template", "add", "t", "--subject", "Hi {{ name", "--text", "x"
    )
    assert "no such file" in fails(
        "template", "add", "t", "--subject", "s", "--text-file", str(tmp_path / "missing.txt")
    )
    assert "is a directory" in fails(
        "template", "add", "t", "--subject", "s", "--text-file", str(tmp_path)
    )
    binary = tmp_path / "body.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert "is not UTF-8 text" in fails(
        "template", "add", "t", "--subject", "s", "--text-file", str(binary)
    )
    assert "needs --subject and --text" in fails("template", "add", "t", "--subject", "s")
    assert "give --text or --text-file, not both" in fails(
        "template",
        "add",
        "t",
        "--subject",
        "s",
        "--text",
        "a",
        "--text-file",
        write(tmp_path, "b.txt", "b"),
    )
    assert "no active template 'nope'" in fails("template", "update", "nope", "--subject", "s")
    assert fetch(env_database, "SELECT * FROM email_templates") == []
    ok("template", "add", "t", "--subject", "s", "--text", "x")
    assert "--data is not valid JSON" in fails("template", "render", "t", "--data", "{name:")
    assert "must be a JSON object" in fails("template", "render", "t", "--data", "[1]")
    assert "Invalid recipient_email" in fails("template", "render", "t", "--to", "not-an-email")


@pytest.mark.parametrize("recipient", ["ann@example.com", "jörg@example.com"])
def test_render_equals_what_the_flow_sends(
    env_database: str, smtpd: SMTPTestServer, tmp_path: Path, recipient: str
) -> None:
    add_local_provider(smtpd)
    ok(
        "template",
        "add",
        "order",
        "--subject",
        "Grüße {{ name }}: order {{ order }}",
        "--text-file",
        write(tmp_path, "t.txt", "Hello {{ name }},\nTotal: {{ total }} €\n"),
        "--html-file",
        write(tmp_path, "t.html", "<p>Hello {{ name }} &amp; <b>{{ total }}</b> €</p>\n"),
        "--from",
        "Bücherei <books@example.com>",
    )
    data = {"name": "Zoë <script>", "order": 42, "total": "12.50"}
    event = ok_json("enqueue", "--to", recipient, "--template", "order", "--data", json.dumps(data))

    preview = ok("template", "render", "--event", str(event["id"]))
    assert "via provider local" in preview.stderr
    adhoc = ok("template", "render", "order", "--to", recipient, "--data", json.dumps(data))

    summary = with_db(env_database, lambda db: drain_queue(db, batch_size=10))
    assert summary.counts["sent"] == 1
    [sent] = smtpd.accepted
    assert on_the_wire(without_date(preview.stdout_bytes)) == without_date(sent.content)
    assert sent.message_id == event["message_id"]
    assert f"X-Mailpipe-Event: {event['id']}".encode() in preview.stdout_bytes
    # Without --event: the same message but for what derives from the event's Message-ID.
    per_event = rb"Message-ID: .*|X-Mailpipe-Event: .*|=_mailpipe_[0-9a-f]+"
    assert re.sub(per_event, b"", without_date(adhoc.stdout_bytes)) == re.sub(
        per_event, b"", without_date(preview.stdout_bytes)
    )


def test_render_fails_with_the_error_the_flow_records(
    env_database: str, smtpd: SMTPTestServer
) -> None:
    add_local_provider(smtpd, "shop@example.com")
    ok("template", "add", "welcome", "--subject", "Hi {{ name }}", "--text", "{{ name }}")
    # A syntax error can only come from a row written by hand (the CLI compiles first).
    execute(
        env_database,
        "INSERT INTO email_templates (template_key, subject, text_body)"
        " VALUES ('broken', 'Hi', 'Hello {% if %}')",
    )
    # `mailpipe enqueue` renders first and refuses these; an application's plain INSERT
    # queues them, and the flow fails them with the same reason.
    queued = {}
    for key in ("welcome", "broken", "nope"):
        refused = fails("enqueue", "--to", "a@example.com", "--template", key)
        [event_id] = with_db(
            env_database, lambda db, key=key: insert_events(db, 1, template=key, payload={})
        )
        queued[key] = {"id": event_id, "refused": refused}
    missing, broken, unknown = queued["welcome"], queued["broken"], queued["nope"]

    lines = {e["id"]: fails("template", "render", "--event", str(e["id"])) for e in queued.values()}
    assert {e["id"]: e["refused"] for e in queued.values()} == lines
    with_db(env_database, lambda db: drain_queue(db, batch_size=10))
    recorded = {
        r["id"]: r["last_error"]
        for r in fetch(
            env_database, "SELECT id, last_error FROM communication_events WHERE status = 'failed'"
        )
    }
    assert lines == {i: f"error: {error}" for i, error in recorded.items()}
    assert "'name' is undefined" in lines[missing["id"]]
    assert "syntax error on line 1" in lines[broken["id"]]
    assert "unknown template 'nope'" in lines[unknown["id"]]
    assert smtpd.messages == []
    assert "no event 999999" in fails("template", "render", "--event", "999999")
    result = invoke("template", "render", "welcome", "--data", '{"name": "Ann"}', "--json")
    assert json.loads(result.stdout)["subject"] == "Hi Ann"
