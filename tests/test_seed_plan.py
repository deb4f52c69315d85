"""The SMTP-hardening test plan (shared/seeds/smtp_hardening_test_plan.md), item by item."""

from __future__ import annotations

import pytest

from mailpipe.db import Database
from mailpipe.verification import REQUIRED_COLUMNS, REQUIRED_INDEXES, verify_schema


async def columns(db: Database, table: str) -> set[str]:
    rows = await db.fetch_all(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    )
    return {r["column_name"] for r in rows}


@pytest.mark.parametrize("table", sorted(REQUIRED_COLUMNS))
async def test_tables_have_the_hardening_columns(db: Database, table: str) -> None:
    # Testing command 1, one table at a time so a failure names the table.
    assert REQUIRED_COLUMNS[table] <= await columns(db, table)


async def test_rate_limit_counters_is_created(db: Database) -> None:
    assert await db.fetch_value("SELECT to_regclass('rate_limit_counters') IS NOT NULL")
    await db.execute(
        "INSERT INTO rate_limit_counters (scope, key, window_size, window_start, count)"
        " VALUES ('provider', 'p1', 'minute', date_trunc('minute', now()), 3)"
    )
    with pytest.raises(Exception, match="rate_limit_counters_count_check"):
        await db.execute(
            "INSERT INTO rate_limit_counters (scope, key, window_size, window_start, count)"
            " VALUES ('provider', 'p2', 'minute', now(), -1)"
        )


@pytest.mark.parametrize("table", sorted(REQUIRED_INDEXES))
async def test_indexes_exist(db: Database, table: str) -> None:
    # Testing command 2.
    rows = await db.fetch_all(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname LIKE 'idx_%%'",
        (table,),
    )
    assert REQUIRED_INDEXES[table] <= {r["indexname"] for r in rows}


async def test_composite_queue_index_columns_in_order(db: Database) -> None:
    definition = await db.fetch_value(
        "SELECT indexdef FROM pg_indexes"
        " WHERE indexname = 'idx_communication_events_status_priority_retry_scheduled'"
    )
    assert "(status, priority, retry_count, scheduled_at)" in definition


async def test_validation_trigger_exists(db: Database) -> None:
    # Testing command 3.
    rows = await db.fetch_all(
        "SELECT trigger_name, event_manipulation, event_object_table"
        " FROM information_schema.triggers WHERE trigger_name = 'validate_communication_event'"
    )
    assert {(r["event_manipulation"], r["event_object_table"]) for r in rows} >= {
        ("INSERT", "communication_events"),
        ("UPDATE", "communication_events"),
    }
    assert (
        await db.fetch_value(
            "SELECT count(*) FROM pg_proc WHERE proname = 'enforce_communication_event_validity'"
        )
        == 1
    )


async def test_trigger_marks_invalid_email_failed(db: Database) -> None:
    # Testing command 4, verbatim.
    row = await db.fetch_one(
        "INSERT INTO communication_events (event_type, recipient_email, template_key)"
        " VALUES ('test', 'invalid-email', 'test_template') RETURNING status, last_error"
    )
    assert row == {"status": "failed", "last_error": "Invalid recipient_email"}
    assert await db.fetch_value("SELECT count(*) FROM communication_events") == 1


VALID = [
    "user@example.com",
    "first.last+tag@example.com",  # plus-addressing
    "x@mail.sub.example.co.uk",  # subdomains
    "o'brien@example.ie",
    "josé@bücher.de",  # IDN domain, UTF-8 local part
    "用户@例子.广告",
    "a@xn--bcher-kva.de",  # punycode
]
INVALID = [
    "invalid-email",
    "",
    "@example.com",
    "user@",
    "user@localhost",
    "user@example",
    "a b@example.com",
    "user@exa mple.com",
    "a..b@example.com",
    ".a@example.com",
    "a.@example.com",
    "user@@example.com",
    "user@example..com",
    "user@.example.com",
    '"quoted"@example.com',
    "user@example.c",
    "user\r\n@example.com",
    "user@example.com\r\nBcc: victim@example.com",
    "<user@example.com>",
    "user@example.com,other@example.com",
    "a" * 65 + "@example.com",
    "a@" + "b" * 250 + ".com",
]


@pytest.mark.parametrize("address", VALID)
async def test_trigger_accepts_valid_addresses(db: Database, address: str) -> None:
    row = await db.fetch_one(
        "INSERT INTO communication_events (event_type, recipient_email, template_key)"
        " VALUES ('welcome', %s, 'welcome') RETURNING status, last_error",
        (address,),
    )
    assert row == {"status": "queued", "last_error": None}


@pytest.mark.parametrize("address", INVALID)
async def test_trigger_rejects_invalid_addresses(db: Database, address: str) -> None:
    row = await db.fetch_one(
        "INSERT INTO communication_events (event_type, recipient_email, template_key)"
        " VALUES ('welcome', %s, 'welcome') RETURNING status, last_error, error_class",
        (address,),
    )
    assert row == {
        "status": "failed",
        "last_error": "Invalid recipient_email",
        "error_class": "invalid",
    }


@pytest.mark.parametrize(
    ("event_type", "template_key", "reason"),
    [
        ("welcome", None, "Missing template_key"),
        ("welcome", "  ", "Missing template_key"),
        (None, "welcome", "Missing event_type"),
        ("", "welcome", "Missing event_type"),
    ],
)
async def test_trigger_marks_missing_fields_failed(
    db: Database, event_type: str | None, template_key: str | None, reason: str
) -> None:
    row = await db.fetch_one(
        "INSERT INTO communication_events (event_type, recipient_email, template_key)"
        " VALUES (%s, 'user@example.com', %s) RETURNING status, last_error",
        (event_type, template_key),
    )
    assert row == {"status": "failed", "last_error": reason}


async def test_trigger_revalidates_a_row_put_back_in_the_queue(db: Database) -> None:
    event_id = await db.fetch_value(
        "INSERT INTO communication_events (event_type, recipient_email, template_key)"
        " VALUES ('welcome', 'user@example.com', 'welcome') RETURNING id"
    )
    await db.execute(
        "UPDATE communication_events SET recipient_email = 'broken' WHERE id = %s", (event_id,)
    )
    assert (
        await db.fetch_value("SELECT status FROM communication_events WHERE id = %s", (event_id,))
        == "failed"
    )


async def test_verify_schema_judges_every_seed_command_ok_and_changes_nothing(
    db: Database,
) -> None:
    checks = await verify_schema(db)
    assert [c.name for c in checks] == [
        "tables_have_required_columns",
        "indexes_exist",
        "trigger_exists",
        "trigger_marks_invalid_email_failed",
    ]
    assert all(c.ok for c in checks), [(c.name, c.problem) for c in checks]
    assert await db.fetch_value("SELECT count(*) FROM communication_events") == 0


async def test_verify_schema_reports_a_missing_index(db: Database) -> None:
    await db.execute("DROP INDEX idx_communication_events_template_key")
    checks = {c.name: c for c in await verify_schema(db)}
    assert not checks["indexes_exist"].ok
    assert "idx_communication_events_template_key" in checks["indexes_exist"].problem


async def test_pg_cron_job_names_are_the_flow_names(project_root) -> None:
    # The seed's pg_cron jobs become flows with the same names (flows/NAME.py:NAME).
    import yaml

    spec = yaml.safe_load((project_root / "prefect.yaml").read_text())
    schedules = {d["name"]: d["schedules"][0]["cron"] for d in spec["deployments"]}
    assert schedules == {
        "process_email_queue": "* * * * *",
        "monitor_smtp_health": "*/5 * * * *",
        "monitor_email_production": "*/5 * * * *",
        "snapshot_email_health": "0 0 * * *",
        "process_email_feedback": "* * * * *",  # new: no pg_cron job ran it
    }
    for deployment in spec["deployments"]:
        path, _, func = deployment["entrypoint"].partition(":")
        assert path == f"flows/{deployment['name']}.py" and func == deployment["name"]
