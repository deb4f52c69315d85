"""The feedback migration: ids typed like the database's own, the vocabulary mirrored by the
CHECK constraints, privileges and row-level security like every table."""

from __future__ import annotations

import re

import pytest

from mailpipe.db import Database
from mailpipe.errors import IntegrityViolation
from mailpipe.feedback.vocabulary import FeedbackKind, FeedbackState, Verification
from mailpipe.migrations import load_migrations


def feedback_migration() -> str:
    [migration] = [m for m in load_migrations() if m.name.endswith("_add_email_feedback")]
    return migration.sql


async def test_ids_take_the_type_of_the_application_schema(db: Database) -> None:
    # An application database (issue 16) has uuid ids: the inbox copies their type.
    await db.execute(
        "CREATE SCHEMA app;"
        " CREATE TABLE app.communication_events (id uuid PRIMARY KEY);"
        " CREATE TABLE app.smtp_delivery_confirmations (id uuid PRIMARY KEY, message_id text);"
        " CREATE TABLE app.email_suppressions (address text, reason text)"
    )
    async with db.connection() as conn:
        await conn.execute("SET search_path TO app")
        await conn.execute(feedback_migration())
        types = await conn.fetch_all(
            "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
            " WHERE attrelid = 'app.email_feedback_events'::regclass"
            " AND attname IN ('matched_event_id', 'confirmation_id') ORDER BY attname"
        )
    assert [(t["attname"], t["type"]) for t in types] == [
        ("confirmation_id", "uuid"),
        ("matched_event_id", "uuid"),
    ]


async def test_ids_are_bigint_in_mailpipes_schema(db: Database) -> None:
    types = await db.fetch_all(
        "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
        " WHERE attrelid = 'email_feedback_events'::regclass"
        " AND attname IN ('matched_event_id', 'confirmation_id') ORDER BY attname"
    )
    assert [t["type"] for t in types] == ["bigint", "bigint"]


async def _check_values(db: Database, constraint: str) -> set[str]:
    definition = await db.fetch_value(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s", (constraint,)
    )
    return set(re.findall(r"'([a-z_]+)'", definition))


async def test_the_enums_mirror_the_check_constraints(db: Database) -> None:
    for constraint, enum in (
        ("email_feedback_events_kind_check", FeedbackKind),
        ("email_feedback_events_state_check", FeedbackState),
        ("email_feedback_events_verification_check", Verification),
    ):
        assert await _check_values(db, constraint) == {v.value for v in enum}, constraint


async def test_every_column_is_commented_and_rls_is_on(db: Database) -> None:
    missing = await db.fetch_all(
        "SELECT a.attname FROM pg_attribute AS a"
        " WHERE a.attrelid = 'email_feedback_events'::regclass AND a.attnum > 0"
        " AND NOT a.attisdropped AND col_description(a.attrelid, a.attnum) IS NULL"
    )
    assert missing == []
    assert await db.fetch_value(
        "SELECT relrowsecurity FROM pg_class WHERE relname = 'email_feedback_events'"
    )
    privileges = await db.fetch_one(
        "SELECT has_table_privilege('mailpipe_app', 'email_feedback_events', 'INSERT') AS app,"
        " has_table_privilege('mailpipe_analyst', 'email_feedback_events', 'SELECT') AS read,"
        " has_table_privilege('mailpipe_analyst', 'email_feedback_events', 'UPDATE') AS write"
    )
    assert privileges == {"app": True, "read": True, "write": False}


async def test_an_unverifiable_body_can_never_be_applied(db: Database) -> None:
    with pytest.raises(IntegrityViolation) as raised:
        await db.execute(
            "INSERT INTO email_feedback_events (provider, provider_event_id, raw, verification,"
            " state, kind) VALUES ('ses', 'x', '{', 'unverifiable', 'received', 'hard_bounce')"
        )
    assert raised.value.constraint_name == "email_feedback_events_unverified_not_applied_check"
