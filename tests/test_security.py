"""Roles, column privileges and RLS, checked as the non-superuser roles themselves."""

from __future__ import annotations

import pytest

from mailpipe.db import Database
from mailpipe.errors import DatabaseError, IntegrityViolation
from tests.reliability.support import as_role

TABLES = [
    "communication_events",
    "smtp_provider_configs",
    "smtp_connection_audit",
    "smtp_delivery_confirmations",
    "rate_limit_counters",
    "email_templates",
    "email_suppressions",
    "delivery_attempts",
]


@pytest.fixture
async def seeded(db: Database) -> Database:
    await db.execute(
        "INSERT INTO smtp_provider_configs (provider_name, host, port, credentials)"
        " VALUES ('primary', 'smtp.example.com', 587, '{\"password_env\": \"SMTP_PASSWORD\"}')"
    )
    await db.execute(
        "INSERT INTO communication_events (event_type, recipient_email, template_key)"
        " VALUES ('welcome', 'a@example.com', 'welcome')"
    )
    return db


async def test_roles_exist_after_migrate(db: Database) -> None:
    rows = await db.fetch_all(
        "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles"
        " WHERE rolname IN ('mailpipe_app', 'mailpipe_analyst') ORDER BY 1"
    )
    assert rows == [
        {"rolname": "mailpipe_analyst", "rolsuper": False, "rolbypassrls": False},
        {"rolname": "mailpipe_app", "rolsuper": False, "rolbypassrls": False},
    ]


async def test_analyst_cannot_read_credentials(seeded: Database) -> None:
    with pytest.raises(DatabaseError, match="permission denied"):
        await as_role(seeded, "mailpipe_analyst", "SELECT credentials FROM smtp_provider_configs")
    with pytest.raises(DatabaseError, match="permission denied"):
        await as_role(seeded, "mailpipe_analyst", "SELECT * FROM smtp_provider_configs")


async def test_analyst_reads_every_other_provider_column(seeded: Database) -> None:
    columns = await seeded.fetch_all(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'smtp_provider_configs' AND column_name <> 'credentials'"
    )
    select = ", ".join(c["column_name"] for c in columns)
    rows = await as_role(seeded, "mailpipe_analyst", f"SELECT {select} FROM smtp_provider_configs")
    assert [r["provider_name"] for r in rows] == ["primary"]


@pytest.mark.parametrize("table", TABLES)
async def test_analyst_is_read_only(seeded: Database, table: str) -> None:
    await as_role(seeded, "mailpipe_analyst", f"SELECT count(*) FROM {table}")
    with pytest.raises(DatabaseError, match="permission denied"):
        await as_role(seeded, "mailpipe_analyst", f"DELETE FROM {table}")


async def test_app_role_sends_mail_and_reads_credential_references(seeded: Database) -> None:
    rows = await as_role(seeded, "mailpipe_app", "SELECT credentials FROM smtp_provider_configs")
    assert rows == [{"credentials": {"password_env": "SMTP_PASSWORD"}}]
    rows = await as_role(
        seeded,
        "mailpipe_app",
        "UPDATE communication_events SET status = 'sent', sent_at = now() RETURNING id",
    )
    assert len(rows) == 1


@pytest.mark.parametrize("table", TABLES)
async def test_rls_is_enabled_with_policies(db: Database, table: str) -> None:
    enabled = await db.fetch_value(
        "SELECT relrowsecurity FROM pg_class WHERE relname = %s", (table,)
    )
    policies = await db.fetch_all(
        "SELECT policyname FROM pg_policies WHERE tablename = %s", (table,)
    )
    assert enabled
    assert {p["policyname"] for p in policies} == {f"{table}_app_all", f"{table}_analyst_read"}


async def test_rls_hides_rows_from_a_granted_role_without_a_policy(seeded: Database) -> None:
    # RLS is real: a role holding SELECT but no policy sees nothing (Supabase's anon, say).
    role = "mailpipe_test_outsider"
    await seeded.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}')"
        f" THEN CREATE ROLE {role} NOLOGIN; END IF; END $$"
    )
    await seeded.execute(f"GRANT SELECT ON communication_events TO {role}")
    assert await as_role(seeded, role, "SELECT id FROM communication_events") == []
    assert (
        len(await as_role(seeded, "mailpipe_analyst", "SELECT id FROM communication_events")) == 1
    )


@pytest.mark.parametrize(
    "credentials",
    ['{"password": "hunter2"}', '{"secret_block": "x", "password": "hunter2"}', '"hunter2"'],
)
async def test_plain_text_passwords_are_refused(db: Database, credentials: str) -> None:
    with pytest.raises(IntegrityViolation) as info:
        await db.execute(
            "INSERT INTO smtp_provider_configs (provider_name, host, credentials)"
            " VALUES ('p', 'h', %s::jsonb)",
            (credentials,),
        )
    assert info.value.constraint_name == "smtp_provider_configs_credentials_is_reference"
