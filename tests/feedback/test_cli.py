"""``mailpipe feedback`` through the real CLI: import, apply, list, and serve as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mailpipe.feedback.providers.generic import sign
from mailpipe.testing.smtpd import free_port
from tests.cli_support import fails, ok, ok_json, with_db
from tests.feedback.support import add_sent_message

FIXTURES = Path(__file__).parent / "fixtures"


def test_import_apply_and_list(env_database: str) -> None:
    sent = with_db(env_database, lambda db: add_sent_message(db, "nosuchuser@example.net"))

    async def use_fixture_message_id(db) -> None:
        await db.execute(
            "UPDATE smtp_delivery_confirmations SET message_id ="
            " '<7d8f2c1e-0b9a-4f5e-9c3d-2a1b0c9d8e7f@mail.example.com>' WHERE id = %s",
            (sent["confirmation_id"],),
        )

    with_db(env_database, use_fixture_message_id)
    files = [str(FIXTURES / n) for n in ("postfix-bounce.eml", "autoreply.eml")]
    result = ok("feedback", "import", *files)
    assert "read 2 message(s): 2 event(s) stored, 0 already stored, 1 kept as invalid" in (
        result.output
    )
    assert ok_json("feedback", "import", *files)["duplicates"] == 2

    applied = ok_json("feedback", "apply")
    assert (applied["applied"], applied["suppressions"], applied["status_changes"]) == (1, 1, 1)

    rows = ok_json("feedback", "list")
    assert [(r["provider"], r["state"], r["kind"]) for r in rows] == [
        ("dsn", "invalid", None),
        ("dsn", "applied", "hard_bounce"),
    ]
    assert rows[1]["recipient"] == "nosuchuser@example.net"
    assert rows[1]["matched_event_id"] == sent["event_id"]
    only_invalid = ok_json("feedback", "list", "--state", "invalid")
    assert len(only_invalid) == 1 and "not a DSN" in only_invalid[0]["error"]

    table = ok("feedback", "list", "--state", "applied").output
    # 80 columns: cells are cut, but the recipient is masked before that.
    assert "n***@" in table and "nosuchuser" not in table and "applied" in table


def test_bad_options_say_what_is_wrong(env_database: str) -> None:
    assert "no such file" in fails("feedback", "import", "/nonexistent/bounce.eml")
    assert "is not a Maildir" in fails("feedback", "import", str(FIXTURES))
    assert "--state 'lost'" in fails("feedback", "list", "--state", "lost")
    assert "--batch-size" in fails("feedback", "apply", "--batch-size", "0")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_runs_the_receiver_with_secrets_from_the_environment(
    env_database: str, workers: int
) -> None:
    port = free_port()
    secret = "cli-generic-secret-0123456789"
    env = {**os.environ, "MAILPIPE_FEEDBACK_GENERIC_SECRET": secret, "PYTHONUNBUFFERED": "1"}
    command = ["feedback", "serve", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(
        [sys.executable, "-m", "mailpipe", *command],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:  # each worker says when its startup (pool, secrets) is done
            seen.append(line)
            if sum("Application startup complete" in s for s in seen) == workers:
                break
        else:
            raise AssertionError("".join(seen))
        body = json.dumps({"id": "c1", "kind": "delivered", "message_id": "<c1@x>"}).encode()
        stamp = str(int(time.time()))
        response = httpx.post(
            f"http://127.0.0.1:{port}/feedback/generic",
            content=body,
            headers={
                "X-Mailpipe-Timestamp": stamp,
                "X-Mailpipe-Signature": sign(secret, stamp, body),
            },
        )
        assert response.status_code == 200, response.text
        not_configured = httpx.post(f"http://127.0.0.1:{port}/feedback/mailgun", content=b"{}")
        assert not_configured.status_code == 503
        assert "MAILPIPE_FEEDBACK_MAILGUN_SIGNING_KEY" in not_configured.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()
    count = with_db(
        env_database, lambda db: db.fetch_value("SELECT count(*) FROM email_feedback_events")
    )
    assert count == 1
