"""``mailpipe queue`` and ``mailpipe enqueue`` through the real CLI, real Postgres and SMTP."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

from mailpipe.db import Database
from mailpipe.delivery import drain_queue
from mailpipe.testing.smtpd import SMTPTestServer, free_port
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
from tests.factories import add_template, insert_events


def setup_sending(url: str, server: SMTPTestServer) -> None:
    add_local_provider(server)
    with_db(url, add_template)


def drain(url: str) -> dict[str, int]:
    return dict(with_db(url, lambda db: drain_queue(db, batch_size=50)).counts)


def events(url: str, ids: list[int] | None = None) -> dict[int, dict]:
    rows = fetch(
        url,
        "SELECT id, status, retry_count, message_id, last_error, scheduled_at,"
        " updated_at FROM communication_events"
        " WHERE %(ids)s::text[] IS NULL OR id = ANY(event_ids(%(ids)s::text[])) ORDER BY id",
        {"ids": ids},
    )
    return {r["id"]: r for r in rows}


def absent_id(url: str) -> str:
    """An id no event has, of the database's id type (bigint here, uuid on an adopted app)."""
    [row] = fetch(
        url,
        "SELECT format_type(atttypid, atttypmod) AS id_type FROM pg_attribute"
        " WHERE attrelid = 'communication_events'::regclass AND attname = 'id'",
    )
    return str(uuid.uuid4()) if row["id_type"] == "uuid" else "999999"


def insert(url: str, count: int, **kwargs) -> list[int]:
    return with_db(url, lambda db: insert_events(db, count, **kwargs))


def claim(url: str, ids: list[int]) -> None:
    """A worker holds these events (processing under a live lease)."""
    execute(
        url,
        "UPDATE communication_events SET status = 'processing', locked_by = 'w:1',"
        " lease_expires_at = now() + interval '5 minutes' WHERE id = ANY(%s)",
        (ids,),
    )


@contextlib.contextmanager
def rows_locked(url: str, ids: list[int]) -> Iterator[None]:
    """Another session holds row locks on these events until the block ends."""
    ready, release, failure = threading.Event(), threading.Event(), []

    async def hold() -> None:
        async with Database(url, min_size=1, max_size=1) as db, db.transaction() as tx:
            await tx.execute(
                "SELECT id FROM communication_events WHERE id = ANY(%s) FOR UPDATE", (ids,)
            )
            ready.set()
            await asyncio.to_thread(release.wait)

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:  # surfaced below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run)
    thread.start()
    ready.wait()
    assert not failure, failure
    try:
        yield
    finally:
        release.set()
        thread.join()


def test_enqueue_validates_and_is_idempotent(env_database: str) -> None:
    with_db(env_database, add_template)
    first = ok_json(
        "enqueue",
        "--to",
        "ann@example.com",
        "--template",
        "welcome",
        "--data",
        '{"name": "Ann"}',
        "--priority",
        "1",
        "--at",
        "10m",
        "--idempotency-key",
        "order-42",
    )
    again = ok_json(
        "enqueue",
        "--to",
        "ann@example.com",
        "--template",
        "welcome",
        "--idempotency-key",
        "order-42",
    )
    assert first["created"] and not again["created"]
    assert (again["id"], again["message_id"]) == (first["id"], first["message_id"])
    [row] = fetch(
        env_database,
        "SELECT priority, payload, scheduled_at - now() AS delay FROM communication_events",
    )
    assert row["priority"] == 1 and row["payload"] == {"name": "Ann"}
    assert dt.timedelta(minutes=9) < row["delay"] <= dt.timedelta(minutes=10)

    assert "Invalid recipient_email" in fails("enqueue", "--to", "ann@", "--template", "w")
    assert "--data is not valid JSON" in fails(
        "enqueue", "--to", "a@example.com", "--template", "w", "--data", "{'a': 1}"
    )
    assert "priority must be an integer from 0" in fails(
        "enqueue", "--to", "a@example.com", "--template", "w", "--priority", "12"
    )
    assert "has no timezone" in fails(
        "enqueue", "--to", "a@example.com", "--template", "w", "--at", "2030-01-01T09:00:00"
    )
    assert "neither an ISO 8601 time" in fails(
        "enqueue", "--to", "a@example.com", "--template", "w", "--at", "tomorrow"
    )
    assert len(fetch(env_database, "SELECT id FROM communication_events")) == 1


def test_enqueue_renders_the_template_first(env_database: str) -> None:
    """What delivery would refuse is refused at enqueue, with its reason, and nothing is
    queued: an unknown template, a missing variable, a line break in a header."""
    with_db(env_database, add_template)
    with_db(
        env_database,
        lambda db: add_template(
            db, "order", subject="Order {{ ref }}", text_body="x", html_body=None
        ),
    )
    assert "unknown template 'nope'" in fails(
        "enqueue", "--to", "a@example.com", "--template", "nope"
    )
    assert "template 'welcome': 'name' is undefined" in fails(
        "enqueue", "--to", "a@example.com", "--template", "welcome", "--data", '{"nam": "Ann"}'
    )
    assert "header injection refused: Subject contains a line break" in fails(
        "enqueue",
        "--to",
        "a@example.com",
        "--template",
        "order",
        "--data",
        json.dumps({"ref": "42\r\nBcc: victim@example.org"}),
    )
    assert fetch(env_database, "SELECT id FROM communication_events") == []
    ok("enqueue", "--to", "a@example.com", "--template", "order", "--data", '{"ref": "42"}')
    assert len(fetch(env_database, "SELECT id FROM communication_events")) == 1


def test_status_and_list(env_database: str) -> None:
    due_urgent = insert(env_database, 2, priority=1)
    due = insert(env_database, 3, priority=5)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    insert(env_database, 1, priority=5, scheduled_at=later)
    execute(
        env_database,
        "UPDATE communication_events SET scheduled_at = now() - interval"
        " '10 minutes' WHERE id = %s",
        (due[0],),
    )
    execute(
        env_database,
        "UPDATE communication_events SET status = 'failed', last_error ="
        " 'x', updated_at = now() - interval '3 hours' WHERE id = %s",
        (due[2],),
    )
    claim(env_database, [due_urgent[1]])
    execute(
        env_database,
        "UPDATE communication_events SET lease_expires_at = now() -"
        " interval '1 minute' WHERE id = %s",
        (due_urgent[1],),
    )

    status = ok_json("queue", "status")
    assert status["by_status"] == {
        "queued": 4,
        "processing": 1,
        "sent": 0,
        "failed": 1,
        "cancelled": 0,
        "suppressed": 0,
    }
    assert {
        (r["status"], r["priority"], r["events"]) for r in status["by_status_and_priority"]
    } == {("queued", 1, 1), ("queued", 5, 3), ("processing", 1, 1), ("failed", 5, 1)}
    assert status["due"] == 3 and status["expired_leases"] == 1
    assert 600 <= status["oldest_due_age_seconds"] < 700
    assert abs(dt.datetime.fromisoformat(status["next_scheduled_at"]) - later) < dt.timedelta(
        seconds=1
    )
    table = ok("queue", "status").output
    assert "oldest due for 10m" in table and "1 processing past their lease" in table

    assert [r["id"] for r in ok_json("queue", "list", "--status", "failed")] == [due[2]]
    assert ok_json("queue", "list", "--status", "failed", "--since", "1h") == []
    assert [r["id"] for r in ok_json("queue", "list", "--status", "failed", "--since", "4h")] == [
        due[2]
    ]
    assert (
        sorted(r["id"] for r in ok_json("queue", "list", "--id", str(due[0]), "--id", str(due[1])))
        == due[:2]
    )
    assert len(ok_json("queue", "list", "--limit", "2")) == 2
    assert "is not one of queued" in fails("queue", "list", "--status", "done")
    assert "not a duration" in fails("queue", "list", "--since", "yesterday")


def test_retry_failed_requeues_exactly_the_selection_and_the_next_drain_sends_it(
    env_database: str, smtpd: SMTPTestServer
) -> None:
    setup_sending(env_database, smtpd)
    sent = insert(env_database, 2, prefix="sent")
    assert drain(env_database) == {"sent": 2}
    smtpd.behaviour.data_reply = "554 5.7.1 message rejected"
    failed = insert(env_database, 5, prefix="failed")
    assert drain(env_database) == {"failed": 5}
    old = failed[:2]
    execute(
        env_database,
        "UPDATE communication_events SET updated_at = now() - interval"
        " '2 hours', retry_count = 3 WHERE id = ANY(%s)",
        (old,),
    )
    queued_later = insert(
        env_database,
        1,
        prefix="later",
        scheduled_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    before = events(env_database)

    assert "say which events to retry" in fails("queue", "retry")
    result = ok_json("queue", "retry", "--failed", "--since", "1h")
    recent = failed[2:]
    # JSON carries ids as numbers or (uuid ids) strings: compare their text.
    assert sorted(map(str, result["requeued"])) == sorted(map(str, recent))
    assert result["refused"] == {}
    after = events(env_database)
    changed = {i for i in after if after[i]["status"] != before[i]["status"]}
    assert changed == set(recent)  # exactly the selection: not the old ones, not the others
    for i in recent:
        assert after[i]["status"] == "queued" and after[i]["retry_count"] == 0
        assert after[i]["message_id"] == before[i]["message_id"]
        assert after[i]["last_error"].startswith("requeued by operator; previous error: 554")

    smtpd.behaviour.data_reply = None
    assert drain(env_database) == {"sent": 3}
    assert sorted(m.message_id for m in smtpd.accepted) == sorted(
        before[i]["message_id"] for i in sent + recent
    )
    assert {events(env_database)[i]["status"] for i in old} == {"failed"}
    assert events(env_database)[queued_later[0]]["status"] == "queued"

    # By id, keeping the retry count; a sent event is refused (it would be a duplicate).
    result = invoke(
        "queue", "retry", "--id", str(old[0]), "--id", str(sent[0]), "--keep-retry-count"
    )
    assert result.exit_code == 1
    assert f"event {sent[0]} left alone: it is sent" in result.stderr
    row = events(env_database, [old[0]])[old[0]]
    assert (row["status"], row["retry_count"]) == ("queued", 3)


def test_retry_leaves_processing_and_locked_rows_alone(env_database: str) -> None:
    ids = insert(env_database, 4)
    execute(
        env_database,
        "UPDATE communication_events SET status = 'failed' WHERE id = ANY(%s)",
        (ids[:3],),
    )
    claim(env_database, [ids[3]])
    # An invalid row (bypassing enqueue) is failed by the trigger and failed again on retry.
    [invalid] = [
        r["id"]
        for r in fetch(
            env_database,
            "INSERT INTO communication_events (event_type, recipient_email,"
            " template_key) VALUES ('x', 'not-an-address', 'welcome') RETURNING id",
        )
    ]
    with rows_locked(env_database, [ids[0]]):
        result = invoke(
            "queue",
            "retry",
            "--failed",
            "--id",
            str(ids[0]),
            "--id",
            str(ids[1]),
            "--id",
            str(ids[3]),
            "--id",
            str(invalid),
            "--json",
        )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert list(map(str, report["requeued"])) == [str(ids[1])]  # JSON: number or uuid text
    assert list(map(str, report["failed_validation"])) == [str(invalid)]
    assert set(report["refused"]) == {str(ids[0]), str(ids[3])}
    assert "locked by another command" in report["refused"][str(ids[0])]
    assert "processing" in report["refused"][str(ids[3])]
    statuses = {i: r["status"] for i, r in events(env_database).items()}
    assert statuses == {
        ids[0]: "failed",
        ids[1]: "queued",
        ids[2]: "failed",
        ids[3]: "processing",
        invalid: "failed",
    }


def test_cancel(env_database: str, smtpd: SMTPTestServer) -> None:
    setup_sending(env_database, smtpd)
    ids = insert(env_database, 4)
    other = insert(env_database, 3, template="digest")
    claim(env_database, [ids[3]])
    absent = absent_id(env_database)
    result = invoke(
        "queue",
        "cancel",
        "--id",
        str(ids[0]),
        "--id",
        str(ids[1]),
        "--id",
        str(ids[3]),
        "--id",
        absent,
    )
    assert result.exit_code == 1
    assert "cancelled 2 event(s)" in result.stdout
    assert f"event {ids[3]} left alone: a worker is sending it right now" in result.stderr
    assert f"event {absent} left alone: no such event" in result.stderr
    ok("queue", "cancel", "--template", "digest")
    assert "say which events to cancel" in fails("queue", "cancel")

    rows = events(env_database)
    assert [rows[i]["status"] for i in ids] == ["cancelled", "cancelled", "queued", "processing"]
    assert {rows[i]["status"] for i in other} == {"cancelled"}
    assert drain(env_database) == {"sent": 1}
    assert len(smtpd.accepted) == 1


def test_purge_deletes_old_finished_events_in_batches_and_keeps_history(
    env_database: str, smtpd: SMTPTestServer
) -> None:
    setup_sending(env_database, smtpd)
    sent = insert(env_database, 5, prefix="sent")
    drain(env_database)
    smtpd.behaviour.data_reply = "554 5.7.1 no"
    insert(env_database, 2, prefix="failed")  # both purged below: failed, 100 days old
    drain(env_database)
    recent_sent = insert(env_database, 1, prefix="recent")
    smtpd.behaviour.data_reply = None
    drain(env_database)
    old_queued = insert(
        env_database,
        1,
        prefix="queued",
        scheduled_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
    )
    processing = insert(env_database, 1, prefix="busy")
    claim(env_database, processing)
    execute(
        env_database,
        "UPDATE communication_events SET updated_at = now() - interval '100 days' WHERE id <> %s",
        (recent_sent[0],),
    )
    locked = sent[0]

    assert "is not one of sent" in fails(
        "queue", "purge", "--status", "queued", "--older-than", "90d", "--yes"
    )
    assert "not a duration" in fails(
        "queue", "purge", "--status", "sent", "--older-than", "0d", "--yes"
    )
    dry = ok_json(
        "queue",
        "purge",
        "--status",
        "sent",
        "--status",
        "failed",
        "--older-than",
        "90d",
        "--dry-run",
    )
    assert (dry["matched"], dry["deleted"]) == (7, 0)
    assert (
        invoke("queue", "purge", "--status", "sent", "--older-than", "90d", input="n\n").exit_code
        == 1
    )
    assert len(events(env_database)) == 10

    with rows_locked(env_database, [locked]):
        result = ok(
            "queue",
            "purge",
            "--status",
            "sent",
            "--status",
            "failed",
            "--older-than",
            "90d",
            "--batch-size",
            "2",
            "--yes",
        )
    assert "deleted 6 event(s) in 3 batch(es)" in result.output
    assert sorted(events(env_database)) == sorted([locked, *recent_sent, *old_queued, *processing])
    confirmations = fetch(
        env_database, "SELECT communication_event_id, message_id FROM smtp_delivery_confirmations"
    )
    assert len(confirmations) == 6  # 5 old + 1 recent, all kept
    assert sorted(c["communication_event_id"] or 0 for c in confirmations) == [
        0,
        0,
        0,
        0,
        locked,
        recent_sent[0],
    ]
    attempts = fetch(
        env_database,
        "SELECT communication_event_id FROM delivery_attempts WHERE outcome = 'failed'",
    )
    assert len(attempts) == 2 and {a["communication_event_id"] for a in attempts} == {None}

    result = ok_json("queue", "purge", "--status", "sent", "--older-than", "90d", "--yes")
    assert result["deleted"] == 1
    assert (
        ok("queue", "purge", "--status", "sent", "--older-than", "90d", "--yes").output.strip()
        == "nothing to purge"
    )


def test_unreachable_postgres_is_one_line_unless_debugging() -> None:
    """No psycopg.pool warnings (two lines per connection attempt) before the error line;
    ``--debug`` shows them."""
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/mailpipe",
        "MAILPIPE_CONNECT_TIMEOUT": "1.5",
    }
    command = [sys.executable, "-m", "mailpipe", "enqueue", "--to", "a@example.com"]
    command += ["--template", "welcome"]
    quiet = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 1
    assert quiet.stderr.splitlines() == [quiet.stderr.strip()], quiet.stderr
    assert quiet.stderr.startswith("error: Postgres is unreachable at postgresql://nobody@")
    debug = subprocess.run(
        [sys.executable, "-m", "mailpipe", "--debug", *command[3:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert debug.returncode == 1 and "WARNING psycopg.pool: error connecting" in debug.stderr
