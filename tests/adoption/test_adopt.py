"""`mailpipe db adopt` on the app's database, before and after the seed's hardening: additive,
idempotent, refused on an unknown shape, and the app's own writers' events delivered."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from typing import Any

import psycopg
import pytest

from mailpipe.adoption.adopt import AdoptionRefused, adopt, rollback_adoption
from mailpipe.adoption.preflight import DatabaseShape, preflight
from mailpipe.db import Database
from mailpipe.delivery import drain_queue
from mailpipe.errors import MigrationError
from mailpipe.providers import add_provider
from mailpipe.queue import cancel_events, enqueue, retry_events
from mailpipe.templates import save_template
from mailpipe.testing.smtpd import SMTPTestServer
from tests.cli_support import fails, invoke, ok

APP_TABLES = (
    "communication_events",
    "smtp_provider_configs",
    "smtp_connection_audit",
    "smtp_delivery_confirmations",
    "orders",
    "customer_accounts",
    "communication_logs",
    "email_delivery_confirmations",
    "email_processing_queue",
)
# What adoption fills on waiting events, only where the app left it empty.
FILLED_ON_WAITING = {"template_key", "payload", "scheduled_at"}

FINGERPRINT = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type AS what
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT 'constraint', conrelid::regclass || '.' || conname || ' ' || convalidated
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT 'index', indexrelid::regclass::text FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'public'::regnamespace
UNION ALL SELECT 'trigger', tgrelid::regclass || '.' || tgname FROM pg_trigger
 WHERE NOT tgisinternal
UNION ALL SELECT 'function', oid::regprocedure::text FROM pg_proc
 WHERE pronamespace = 'public'::regnamespace
UNION ALL SELECT 'enum', enumtypid::regtype || '.' || enumlabel FROM pg_enum
ORDER BY 1, 2
"""


def fingerprint(url: str) -> list[tuple[str, str]]:
    """Everything adoption could change in the schema, as sorted text."""
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(FINGERPRINT).fetchall()]


def table_rows(url: str) -> dict[str, dict[Any, dict[str, Any]]]:
    """Every row of the app's tables by id (the app's columns as they are now)."""
    out: dict[str, dict[Any, dict[str, Any]]] = {}
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        for table in APP_TABLES:
            out[table] = {r["id"]: r for r in conn.execute(f"SELECT * FROM {table}").fetchall()}
    return out


@pytest.fixture(params=["before", "after"])
def app_url(request: pytest.FixtureRequest) -> str:
    """The app's database before, then after, the seed's hardening."""
    return request.getfixturevalue(f"app_{request.param}_url")


async def _adopt(url: str, **kwargs: Any):
    async with Database(url, min_size=1, max_size=2) as db:
        return await adopt(db, **kwargs)


async def test_adoption_keeps_every_row_and_reruns_as_a_no_op(app_url: str) -> None:
    before = table_rows(app_url)
    first = await _adopt(app_url)
    assert first.adoption_applied == ["adoption/0001_adopt_app_shape"]
    assert first.baselined == [
        "0001_create_base_tables",
        "0002_harden_smtp",
        "0003_add_delivery_engine",
    ]
    assert "0008_check_event_priority" in first.migrations_applied

    after = table_rows(app_url)
    for table, rows in before.items():
        assert set(after[table]) == set(rows), table
        for row_id, old in rows.items():
            new = after[table][row_id]
            for column, value in old.items():
                if table == "communication_events" and column in FILLED_ON_WAITING:
                    assert value is None or new[column] == value, (table, column)
                    continue
                if isinstance(value, dt.datetime) and value.tzinfo is None:
                    # timestamp without time zone became timestamptz, the value read as UTC
                    assert new[column] == value.replace(tzinfo=dt.UTC), (table, column)
                    continue
                assert new[column] == value, (table, row_id, column)

    # Supabase's lint: every function mailpipe added has a fixed search_path, except the two
    # the planner must inline (a SET clause stops inlining).
    with psycopg.connect(app_url) as conn:
        mutable = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p"
            " WHERE p.pronamespace = 'public'::regnamespace AND p.proconfig IS NULL"
            " AND p.proname IN ('is_valid_recipient_email', 'quality_worker_is_alive',"
            " 'app_priority', 'new_message_id', 'reserve_send_quota', 'mailpipe_map_app_event',"
            " 'mailpipe_sync_provider_name', 'mailpipe_fill_audit', 'mailpipe_fill_confirmation',"
            " 'enforce_communication_event_validity', 'event_priority', 'event_ids')"
            " ORDER BY 1"
        ).fetchall()
    assert [r[0] for r in mutable] == [
        "event_ids(text[])",
        "event_priority(integer)",
        "event_priority(text)",
    ]

    shape = fingerprint(app_url)
    second = await _adopt(app_url)
    assert not second.changed and second.shape == DatabaseShape.ADOPTED
    assert fingerprint(app_url) == shape
    assert table_rows(app_url) == after


async def test_unknown_shape_is_refused_and_nothing_changes(unknown_shape_url: str) -> None:
    shape = fingerprint(unknown_shape_url)
    with pytest.raises(AdoptionRefused, match="nothing changed"):
        await _adopt(unknown_shape_url)
    assert fingerprint(unknown_shape_url) == shape


async def test_mailpipe_database_is_refused(database_url: str) -> None:
    with pytest.raises(AdoptionRefused, match="mailpipe db migrate"):
        await _adopt(database_url)


async def test_preflight_after_adoption_leaves_only_the_secrets(app_url: str) -> None:
    await _adopt(app_url)
    async with Database(app_url, min_size=1, max_size=1) as db:
        report = await preflight(db)
    assert report.shape == DatabaseShape.ADOPTED
    assert report.pending_migrations == []
    # The passwords move with `mailpipe provider adopt` (the runbook's next step).
    assert report.blocker_codes() == ["plaintext_credentials"]


async def test_the_apps_trigger_path_is_delivered(app_url: str, smtpd: SMTPTestServer) -> None:
    await _adopt(app_url)
    async with Database(app_url, min_size=1, max_size=4) as db:
        await add_provider(
            db,
            "mailpipe-smtp",
            host="127.0.0.1",
            port=smtpd.port,
            tls_mode="none",
            from_address="Shop <shop@example.com>",
            priority=1,
        )
        # The app's old providers hold plaintext until `provider adopt`: out of the way here.
        await db.execute(
            "UPDATE smtp_provider_configs SET status = 'disabled'"
            " WHERE provider_name <> 'mailpipe-smtp'"
        )
        await save_template(
            db,
            "order_confirmation",
            subject="Order {{ orderNumber }}",
            text_body="Hello {{ customerName }}, your order {{ orderNumber }} is in.\n",
        )
        # An order placed through the API as an authenticated user: the app's trigger writes
        # the event with template_id and variables, no template_key, no payload.
        async with db.transaction() as tx:
            await tx.execute("SET LOCAL ROLE authenticated")
            await tx.execute(
                "SELECT set_config('request.jwt.claims', %s, true)",
                ('{"role": "authenticated", "sub": "6f1c7c3e-2b47-4a51-9b3e-000000000001"}',),
            )
            await tx.execute(
                "INSERT INTO orders (order_number, customer_name, customer_email, total_amount)"
                " VALUES ('ORD-9000', 'Hedy', 'hedy@example.com', 99)"
            )
        event = await db.fetch_one(
            "SELECT e.id, e.status, e.template_id, e.template_key, e.priority, e.last_error"
            " FROM communication_events e JOIN orders o ON o.id = e.order_id"
            " WHERE o.order_number = 'ORD-9000'"
        )
        assert event is not None
        assert event["status"] == "queued", event["last_error"]
        assert event["template_id"] == event["template_key"] == "order_confirmation"
        assert event["priority"] == "normal"  # the app's column keeps the app's values
        queued_for_app = await db.fetch_value(
            "SELECT count(*) FROM email_processing_queue WHERE event_id = %s", (event["id"],)
        )
        assert queued_for_app == 1  # the app's own trigger still fired

        await drain_queue(db, batch_size=50)
        row = await db.fetch_one(
            "SELECT status, provider_name, sent_at FROM communication_events WHERE id = %s",
            (event["id"],),
        )
        confirmation = await db.fetch_one(
            "SELECT communication_event_id, email_id, provider_used, delivery_status, status"
            " FROM smtp_delivery_confirmations WHERE communication_event_id = %s",
            (event["id"],),
        )
    assert row is not None and row["status"] == "sent" and row["provider_name"] == "mailpipe-smtp"
    sent = [m for m in smtpd.messages if m.rcpt_tos == ["hedy@example.com"]]
    assert len(sent) == 1
    assert b"Hello Hedy, your order ORD-9000 is in." in sent[0].content.replace(b"\r\n", b"\n")
    assert confirmation is not None
    assert confirmation["email_id"] == str(event["id"])
    assert (confirmation["provider_used"], confirmation["delivery_status"]) == (
        "mailpipe-smtp",
        "sent",
    )
    assert confirmation["status"] == "accepted"


async def test_a_concurrent_writer_is_not_blocked_beyond_lock_timeout(app_before_url: str) -> None:
    lock_timeout = 1.0
    done = threading.Event()
    waits: list[float] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with psycopg.connect(app_before_url, autocommit=True) as conn:
                conn.execute("SET statement_timeout = '30s'")
                while not done.is_set():
                    started = time.monotonic()
                    conn.execute(
                        "INSERT INTO customer_accounts (name, email)"
                        " VALUES ('Writer', 'writer@example.com')"
                    )
                    waits.append(time.monotonic() - started)
        except BaseException as exc:  # reported below: a failed writer must fail the test
            errors.append(exc)

    thread = threading.Thread(target=writer, name="app-writer")
    thread.start()
    try:
        result = await _adopt(app_before_url, lock_timeout=f"{lock_timeout:g}s")
    finally:
        done.set()
        await asyncio.to_thread(thread.join)
    assert not errors, errors
    assert result.adoption_applied
    assert len(waits) > 10  # the writer really wrote during adoption
    # Each insert (an order trigger's event goes through the outbox too) waited at most one
    # lock_timeout behind an ALTER, plus scheduling slack on a shared machine.
    assert max(waits) < lock_timeout + 1.0, max(waits)


def test_cli_adopt_then_ids_of_the_databases_type(
    app_after_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailpipe.config import get_settings

    monkeypatch.setenv("DATABASE_URL", app_after_url)
    get_settings.cache_clear()
    try:
        first = invoke("db", "adopt")
        assert first.exit_code == 0, first.output
        assert "adopted adoption/0001_adopt_app_shape" in first.output
        assert "baselined 0003_add_delivery_engine" in first.output
        assert "already adopted and up to date" in ok("db", "adopt").stdout
        status = ok("db", "status", "--json").stdout
        assert '"pending"' not in status and '"edited"' not in status
        ok("db", "verify")  # the seed's verification queries hold on the adopted shape

        # --id takes what the database has: uuids here; a number says what is expected.
        line = fails("queue", "cancel", "--id", "12")
        assert "event ids are UUIDs in this database" in line
        with psycopg.connect(app_after_url) as conn:
            row = conn.execute(
                "SELECT id FROM communication_events WHERE status = 'queued' LIMIT 1"
            ).fetchone()
        assert row is not None
        cancelled = ok("queue", "cancel", "--id", str(row[0]))
        assert f"cancelled 1 event(s): {row[0]}" in cancelled.stdout
        assert "write PROVIDER=VAR" in fails("provider", "adopt", "--password-env", "x")

        # A template preview of one of the app's events, by its uuid, with the app's variables.
        with psycopg.connect(app_after_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO email_templates (template_key, subject, text_body, from_address)"
                " VALUES ('welcome_customer', 'Hi', 'Hello {{ customerName }}.',"
                " 'shop@example.com')"
            )
            welcome = conn.execute(
                "SELECT id FROM communication_events WHERE template_key = 'welcome_customer'"
            ).fetchone()
        assert welcome is not None
        preview = ok("template", "render", "welcome_customer", "--event", str(welcome[0]))
        assert "Hello Barbara." in preview.stdout

        assert "adoption rolled back" in ok("db", "adopt", "--rollback").stdout
        shape = json.loads(invoke("db", "preflight", "--json").stdout)["shape"]
        assert shape == "app_after_hardening"
    finally:
        get_settings.cache_clear()


async def test_a_lock_timeout_stops_adoption_and_a_rerun_finishes_it(app_before_url: str) -> None:
    # A long transaction of the app's reads the providers: adoption's ALTER on that table must
    # give up after lock_timeout instead of queueing the app's writes behind it.
    holder = psycopg.connect(app_before_url)
    holder.execute("LOCK TABLE smtp_provider_configs IN ACCESS SHARE MODE")
    try:
        with pytest.raises(MigrationError, match="lock timeout.*run again"):
            await _adopt(app_before_url, lock_timeout="200ms")
        async with Database(app_before_url, min_size=1, max_size=1) as db:
            midway = await preflight(db)
            replica = await db.fetch_value("SHOW session_replication_role")
        assert midway.shape == DatabaseShape.ADOPTING
        assert "adoption_incomplete" in [f.code for f in midway.findings]
        assert replica == "origin"
    finally:
        holder.rollback()
        holder.close()
    result = await _adopt(app_before_url)
    assert result.adoption_applied == ["adoption/0001_adopt_app_shape"]
    async with Database(app_before_url, min_size=1, max_size=1) as db:
        assert (await preflight(db)).shape == DatabaseShape.ADOPTED


async def test_the_apps_triggers_fire_on_what_mailpipe_writes(app_url: str) -> None:
    await _adopt(app_url)
    async with Database(app_url, min_size=1, max_size=2) as db:
        await save_template(db, "receipt", subject="Receipt", text_body="Paid {{ amount }}.\n")
        queued = await enqueue(db, "payer@example.com", "receipt", {"amount": "3"}, priority=1)
        row = await db.fetch_one(
            "SELECT status, priority, updated_at FROM communication_events WHERE id = %s",
            (queued.id,),
        )
        # mailpipe's 1 is the app's 'urgent'; the app's queue trigger saw a queued event.
        assert row is not None and (row["status"], row["priority"]) == ("queued", "urgent")
        app_queue = "SELECT priority FROM email_processing_queue WHERE event_id = %s"
        assert [r["priority"] for r in await db.fetch_all(app_queue, (queued.id,))] == ["high"]

        await cancel_events(db, ids=[queued.id])
        await retry_events(db, statuses=["cancelled"], ids=[queued.id])
        after = await db.fetch_one(
            "SELECT status, updated_at FROM communication_events WHERE id = %s", (queued.id,)
        )
        # The app's updated_at trigger ran on mailpipe's updates; its queue trigger queued the
        # retried event again, as it does for the app's own requeues.
        assert after is not None and after["status"] == "queued"
        assert after["updated_at"] > row["updated_at"]
        assert len(await db.fetch_all(app_queue, (queued.id,))) == 2


async def test_rollback_takes_back_what_adoption_added(app_url: str) -> None:
    shape, rows = fingerprint(app_url), table_rows(app_url)
    await _adopt(app_url)
    async with Database(app_url, min_size=1, max_size=2) as db:
        await rollback_adoption(db)
    # Postgres cannot remove enum values: cancelled and suppressed stay (harmless to the app).
    added_enum = {
        ("enum", "communication_event_status.cancelled"),
        ("enum", "communication_event_status.suppressed"),
    }
    assert set(fingerprint(app_url)) - set(shape) == added_enum
    assert set(shape) - set(fingerprint(app_url)) == set()
    after = table_rows(app_url)
    for table, old_rows in rows.items():
        assert set(after[table]) == set(old_rows), table
        for row_id, old in old_rows.items():
            for column, value in old.items():
                if table == "communication_events" and column in FILLED_ON_WAITING:
                    assert value is None or after[table][row_id][column] == value
                else:
                    assert after[table][row_id][column] == value, (table, column)
    # And adopting again works from there.
    assert (await _adopt(app_url)).adoption_applied
