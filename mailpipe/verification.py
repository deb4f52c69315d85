"""The seed test plan's verification queries, as checks with a verdict each."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailpipe.db import Database, Row
from mailpipe.queries import parse_queries, sql_dir

REQUIRED_COLUMNS: dict[str, set[str]] = {
    "smtp_provider_configs": {
        "provider_name",
        "status",
        "suspended_until",
        "credentials",
        "last_checked",
    },
    "smtp_connection_audit": {
        "provider_name",
        "connection_attempt_at",
        "ip_address",
        "result",
        "updated_at",
    },
    "smtp_delivery_confirmations": {"provider_name", "message_id", "status"},
    "rate_limit_counters": {"scope", "key", "window_size", "window_start", "count"},
}
REQUIRED_INDEXES: dict[str, set[str]] = {
    "communication_events": {
        "idx_communication_events_status_priority_retry_scheduled",
        "idx_communication_events_recipient_email",
        "idx_communication_events_template_key",
    },
    "smtp_connection_audit": {"idx_smtp_connection_audit_provider_attempt"},
    "smtp_delivery_confirmations": {"idx_smtp_delivery_confirmations_recipient_created"},
}


@dataclass
class Check:
    """One verification query: its rows and whether they show the requirement holds."""

    name: str
    description: str
    rows: list[Row] = field(default_factory=list)
    ok: bool = False
    problem: str = ""


def _verification_queries() -> dict[str, str]:
    return parse_queries(
        (sql_dir() / "verify.sql").read_text(encoding="utf-8"), origin="sql/verify.sql"
    )


async def verify_schema(db: Database) -> list[Check]:
    """Run the seed's four testing commands and judge each result."""
    queries = _verification_queries()
    checks = []
    for name, sql in queries.items():
        description = sql.splitlines()[0].removeprefix("--").strip()
        check = Check(name, description)
        async with db.connection() as conn:
            # The trigger check inserts a row: keep the database as it was.
            await conn.execute("BEGIN")
            try:
                check.rows = await conn.fetch_all(sql)
            finally:
                await conn.execute("ROLLBACK")
        check.ok, check.problem = _judge(name, check.rows)
        checks.append(check)
    return checks


def _judge(name: str, rows: list[Row]) -> tuple[bool, str]:
    if name == "tables_have_required_columns":
        missing = []
        for table, columns in REQUIRED_COLUMNS.items():
            have = {r["column_name"] for r in rows if r["table_name"] == table}
            missing += [f"{table}.{c}" for c in sorted(columns - have)]
        return not missing, ("missing: " + ", ".join(missing)) if missing else ""
    if name == "indexes_exist":
        missing = []
        for table, indexes in REQUIRED_INDEXES.items():
            have = {r["indexname"] for r in rows if r["tablename"] == table}
            missing += sorted(indexes - have)
        return not missing, ("missing: " + ", ".join(missing)) if missing else ""
    if name == "trigger_exists":
        ok = any(r["event_manipulation"] == "INSERT" for r in rows)
        return ok, "" if ok else "trigger validate_communication_event is missing"
    if name == "trigger_marks_invalid_email_failed":
        ok = (
            bool(rows)
            and rows[0]["status"] == "failed"
            and rows[0]["last_error"] == "Invalid recipient_email"
        )
        return ok, "" if ok else f"got {rows}"
    return bool(rows), "" if rows else "no rows"
