"""The migration runner: ordered, idempotent, checksummed, serialised, data-preserving."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from mailpipe.db import Database
from mailpipe.errors import MigrationError
from mailpipe.migrations import load_migrations, migrate, migration_status
from mailpipe.queries import sql_dir

SCHEMA_SNAPSHOT = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type
       || ' ' || is_nullable || ' ' || coalesce(column_default, '') AS item
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint', conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'policy', tablename || ' ' || policyname || ' ' || array_to_string(roles, ',')
  FROM pg_policies WHERE schemaname = 'public'
UNION ALL
SELECT 'trigger', tgrelid::regclass || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'grant', table_name || ' ' || grantee || ' ' || privilege_type
  FROM information_schema.role_table_grants WHERE table_schema = 'public'
ORDER BY 1, 2
"""


async def snapshot(db: Database) -> list[tuple[str, str]]:
    return [(r["kind"], r["item"]) for r in await db.fetch_all(SCHEMA_SNAPSHOT)]


async def test_migrate_applies_every_file_in_order(empty_database_url: str) -> None:
    async with Database(empty_database_url, min_size=1, max_size=2) as db:
        applied = await migrate(db)
        assert applied == [m.name for m in load_migrations()]
        assert applied[:3] == [
            "0001_create_base_tables",
            "0002_harden_smtp",
            "0003_add_delivery_engine",
        ]
        statuses = await migration_status(db)
        assert {s.state for s in statuses} == {"applied"}


async def test_migrate_twice_changes_nothing(db: Database) -> None:
    before = await snapshot(db)
    assert len(before) > 100
    assert await migrate(db) == []
    assert await snapshot(db) == before


async def test_every_migration_is_idempotent_sql(db: Database) -> None:
    # Re-running each file's SQL by hand (as on a database where part of it exists) must
    # succeed and leave the schema as it was: the seed's "IF NOT EXISTS everywhere".
    before = await snapshot(db)
    for migration in load_migrations():
        await db.execute(migration.sql)
    assert await snapshot(db) == before


async def test_hardening_preserves_existing_rows(empty_database_url: str) -> None:
    async with Database(empty_database_url, min_size=1, max_size=2) as db:
        await migrate(db, target="0001_create_base_tables")
        await db.execute(
            "INSERT INTO communication_events (event_type, recipient_email, template_key, status,"
            " payload) VALUES ('welcome', 'a@example.com', 'welcome', 'sent', '{\"n\": 1}'),"
            " ('reset', 'b@example.com', 'reset', 'queued', '{}')"
        )
        await db.execute(
            "INSERT INTO smtp_provider_configs (host, port, username) VALUES"
            " ('smtp.one.example', 587, 'u1'), ('smtp.two.example', 465, 'u2')"
        )
        await db.execute(
            "INSERT INTO smtp_connection_audit (host, success, error_text, created_at) VALUES"
            " ('smtp.one.example', true, null, '2025-08-01T10:00Z'),"
            " ('smtp.two.example', false, 'refused', '2025-08-01T11:00Z')"
        )
        await db.execute(
            "INSERT INTO smtp_delivery_confirmations (communication_event_id, recipient_email,"
            " smtp_response) VALUES (1, 'a@example.com', '250 OK')"
        )

        assert len(await migrate(db)) == len(load_migrations()) - 1

        events = await db.fetch_all(
            "SELECT event_type, recipient_email, status, payload, message_id"
            " FROM communication_events ORDER BY id"
        )
        assert [(e["event_type"], e["status"], e["payload"]) for e in events] == [
            ("welcome", "sent", {"n": 1}),
            ("reset", "queued", {}),
        ]
        assert all(e["message_id"].startswith("<") for e in events)
        providers = await db.fetch_all(
            "SELECT provider_name, host, status FROM smtp_provider_configs ORDER BY id"
        )
        assert providers == [
            {"provider_name": "provider-1", "host": "smtp.one.example", "status": "active"},
            {"provider_name": "provider-2", "host": "smtp.two.example", "status": "active"},
        ]
        audit = await db.fetch_all(
            "SELECT result, connection_attempt_at::text AS at FROM smtp_connection_audit"
            " ORDER BY id"
        )
        assert [a["result"] for a in audit] == ["ok", "smtp_error"]
        assert audit[0]["at"].startswith("2025-08-01 10:00")
        assert (
            await db.fetch_value("SELECT smtp_response FROM smtp_delivery_confirmations")
            == "250 OK"
        )


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    shutil.copytree(sql_dir() / "migrations", folder)
    return folder


async def test_edited_applied_migration_is_refused(
    empty_database_url: str, migrations_copy: Path
) -> None:
    async with Database(empty_database_url, min_size=1, max_size=2) as db:
        await migrate(db, migrations_copy)
        edited = migrations_copy / "0002_harden_smtp.sql"
        edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
        with pytest.raises(MigrationError, match="0002_harden_smtp.sql was edited after it was"):
            await migrate(db, migrations_copy)
        states = {s.name: s.state for s in await migration_status(db, migrations_copy)}
        assert states["0002_harden_smtp"] == "edited"


async def test_failed_migration_rolls_back_and_names_the_file(
    empty_database_url: str, migrations_copy: Path
) -> None:
    number = len(load_migrations()) + 1
    (migrations_copy / f"{number:04d}_break_things.sql").write_text(
        "-- Why: a test.\nCREATE TABLE half_done (id int);\nSELECT 1/0;\n"
    )
    async with Database(empty_database_url, min_size=1, max_size=2) as db:
        with pytest.raises(MigrationError, match=f"{number:04d}_break_things.sql failed"):
            await migrate(db, migrations_copy)
        assert await db.fetch_value("SELECT to_regclass('half_done')") is None
        states = {s.name: s.state for s in await migration_status(db, migrations_copy)}
        assert states[f"{number:04d}_break_things"] == "pending"
        assert states["0001_create_base_tables"] == "applied"


def test_badly_named_or_gapped_files_are_refused(migrations_copy: Path) -> None:
    (migrations_copy / "add_stuff.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_verb_object.sql"):
        load_migrations(migrations_copy)
    (migrations_copy / "add_stuff.sql").unlink()
    (migrations_copy / "0042_add_stuff.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="expected number"):
        load_migrations(migrations_copy)


def test_every_migration_starts_with_a_why_comment() -> None:
    for migration in load_migrations():
        assert migration.sql.startswith("-- Why:"), migration.name


async def test_concurrent_runners_apply_each_file_once(empty_database_url: str) -> None:
    pools = [Database(empty_database_url, min_size=1, max_size=1) for _ in range(4)]
    for pool in pools:
        await pool.open()
    try:
        results = await asyncio.gather(*(migrate(pool) for pool in pools))
    finally:
        for pool in pools:
            await pool.close()
    applied = [name for result in results for name in result]
    assert sorted(applied) == [m.name for m in load_migrations()]
