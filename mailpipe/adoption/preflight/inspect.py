"""``preflight()``: the read-only inspection, every query in one ``READ ONLY`` transaction."""

from __future__ import annotations

import re
from typing import Any

from mailpipe.adoption import SEED_JOBS
from mailpipe.adoption.preflight.judge import _judge
from mailpipe.adoption.preflight.model import (
    _APP_SHAPES,
    ADOPTION_PREFIX,
    APP_TABLES,
    MAILPIPE_ROLES,
    SUPABASE_ROLES,
    TABLES,
    DatabaseShape,
    Finding,
    PreflightReport,
    Shape,
    TableReport,
)
from mailpipe.adoption.preflight.shapes import _database_shape, _table_shape, connection_mode
from mailpipe.adoption.preflight.steps import _steps
from mailpipe.db import Database, Row, Transaction
from mailpipe.errors import DatabaseError
from mailpipe.migrations import load_migrations
from mailpipe.queries import query
from mailpipe.queue import STATUSES

# Columns whose values are secrets when found in clear in smtp_provider_configs.
_SECRET_COLUMN = re.compile(r"(password|secret|api_key|token)", re.IGNORECASE)


async def preflight(db: Database) -> PreflightReport:
    """Inspect the target read-only and return the report (see the module docstring)."""
    async with db.connection() as conn:
        first = await conn.fetch_one(query("adoption_session"))
        second = await conn.fetch_one(query("adoption_session"))
    assert first is not None and second is not None  # a SELECT without FROM returns a row
    mode, evidence = connection_mode(
        db.url, first["backend_pid"], second["backend_pid"], first["server_port"]
    )
    connection = {
        "mode": mode,
        "evidence": evidence,
        "role": first["role_name"],
        "database": first["database_name"],
        "schema": first["schema_name"],
        "server_version": first["server_version"],
    }
    try:
        async with db.transaction() as tx:
            await tx.execute(query("adoption_begin_read_only"))
            await tx.fetch_one(query("adoption_limit_waits"))
            report = await _inspect(tx, connection)
    except DatabaseError as exc:
        if "lock timeout" in str(exc):
            raise DatabaseError(
                f"{exc}: another session holds a lock on one of the tables (a migration or a "
                "long transaction). Preflight does not queue behind locks, since the sessions "
                "queued behind it would wait too; run it again once that session is done"
            ) from exc
        if "statement timeout" in str(exc):
            raise DatabaseError(
                f"{exc}: one of preflight's queries ran past its 60 s limit (counting "
                "communication_events by status on a very large table, or a busy server); run "
                "it at a quieter time, or against a recent replica or branch of the database"
            ) from exc
        raise
    _judge(report)
    return report


async def _present(tx: Transaction, name: str) -> bool:
    return bool(await tx.fetch_value(query("adoption_relation_exists"), {"name": name}))


async def _inspect(tx: Transaction, connection: dict[str, Any]) -> PreflightReport:
    wanted = list(TABLES + APP_TABLES)
    columns: dict[str, dict[str, str]] = {name: {} for name in wanted}
    enums: dict[tuple[str, str], bool] = {}
    for row in await tx.fetch_all(query("adoption_columns"), {"tables": wanted}):
        columns[row["table_name"]][row["column_name"]] = row["data_type"]
        enums[(row["table_name"], row["column_name"])] = row["is_enum"]
    sizes = {
        r["table_name"]: r
        for r in await tx.fetch_all(query("adoption_table_sizes"), {"tables": wanted})
    }

    tables: dict[str, TableReport] = {}
    for name in TABLES:
        shape, reason = _table_shape(name, columns[name])
        size = sizes.get(name, {})
        tables[name] = TableReport(
            name=name,
            shape=shape,
            id_type=columns[name].get("id"),
            estimated_rows=size.get("estimated_rows"),
            total_bytes=size.get("total_bytes"),
            rls_enabled=size.get("rls_enabled"),
            reason=reason,
        )
    app_tables = [
        TableReport(
            name=name,
            shape=Shape.APP if columns[name] else Shape.ABSENT,
            id_type=columns[name].get("id"),
            estimated_rows=sizes.get(name, {}).get("estimated_rows"),
            total_bytes=sizes.get(name, {}).get("total_bytes"),
            rls_enabled=sizes.get(name, {}).get("rls_enabled"),
        )
        for name in APP_TABLES
    ]

    has_migrations = await _present(tx, "schema_migrations")
    shape, unknown_reason = _database_shape(tables, has_migrations)
    applied: list[str] = []
    if has_migrations:
        applied = [r["name"] for r in await tx.fetch_all(query("adoption_applied_migrations"))]
    if any(name.startswith(ADOPTION_PREFIX) for name in applied):
        shape, unknown_reason = DatabaseShape.ADOPTED, None
    elif tables["communication_events"].shape == Shape.APP and await tx.fetch_value(
        query("adoption_started")
    ):
        # A `mailpipe db adopt` stopped midway (lock timeout, crash): the tables are part the
        # app's, part mailpipe's. Re-running it finishes the job.
        shape, unknown_reason = DatabaseShape.ADOPTING, None
    report = PreflightReport(
        shape=shape,
        connection=connection,
        tables=[*tables.values(), *(t for t in app_tables if t.shape != Shape.ABSENT)],
    )
    if unknown_reason:
        report.findings.append(Finding("table_shapes", unknown_reason))
    report.applied_migrations = applied
    if shape in (DatabaseShape.FRESH, DatabaseShape.MAILPIPE, DatabaseShape.ADOPTED):
        known = [m.name for m in load_migrations()]
        report.pending_migrations = [n for n in known if n not in report.applied_migrations]

    events = columns["communication_events"]
    if "status" in events:
        report.status_type = events["status"]
        report.statuses = {
            r["status"]: r["events"] for r in await tx.fetch_all(query("adoption_status_counts"))
        }
        report.unknown_statuses = {s: n for s, n in report.statuses.items() if s not in STATUSES}
        if enums.get(("communication_events", "status")):
            labels = await tx.fetch_all(
                query("adoption_enum_values"), {"type_name": events["status"]}
            )
            report.status_values = [r["value"] for r in labels]

    report.priority_type = events.get("priority")
    if report.shape in _APP_SHAPES:
        row = await tx.fetch_one(query("adoption_events_without_template_key"))
        assert row is not None  # an aggregate without GROUP BY returns one row
        report.template_keys = dict(row)

    provider_columns = columns["smtp_provider_configs"]
    if provider_columns:
        secret_columns = [c for c in provider_columns if _SECRET_COLUMN.search(c)]
        rows = await tx.fetch_all(
            query("adoption_provider_secrets"), {"secret_columns": secret_columns}
        )
        in_clear = [r for r in rows if r["columns_with_values"] or r["credentials_in_clear"]]
        report.plaintext_secrets = {
            "providers": len(in_clear),
            "provider_names": [r["provider"] for r in in_clear],
            "columns": sorted(
                {c for r in in_clear for c in r["columns_with_values"]}
                | ({"credentials"} if any(r["credentials_in_clear"] for r in in_clear) else set())
            ),
        }

    report.policies = await tx.fetch_all(query("adoption_policies"), {"tables": wanted})
    roles = {
        r["role_name"]: r
        for r in await tx.fetch_all(
            query("adoption_roles"),
            {"roles": [*MAILPIPE_ROLES, *SUPABASE_ROLES, connection["role"]]},
        )
    }
    report.roles_needing_policies = _roles_needing_policies(
        [t for t in report.tables if t.rls_enabled], report.policies, roles, connection["role"]
    )

    cron_version = await tx.fetch_value(query("adoption_extension_version"), {"name": "pg_cron"})
    report.cron = {"installed": cron_version is not None, "version": cron_version, "jobs": []}
    if cron_version is not None:
        jobs = await tx.fetch_all(query("adoption_cron_jobs"))
        runs: dict[int, Row] = {}
        # cron.job_run_details appeared in pg_cron 1.4; older versions keep no run history.
        if await _present(tx, "cron.job_run_details"):
            runs = {r["job_id"]: r for r in await tx.fetch_all(query("adoption_cron_runs"))}
        for job in jobs:
            run = runs.get(job["job_id"], {})
            job["running"] = run.get("running", 0)
            job["last_status"] = run.get("last_status")
            job["last_start"] = run.get("last_start")
            job["seed_job"] = job["job_name"] in SEED_JOBS
        report.cron["jobs"] = jobs
    if await _present(tx, "net.http_request_queue"):
        report.net_queue = await tx.fetch_value(query("adoption_net_queue"))

    if events:
        report.event_writers = await tx.fetch_all(query("adoption_event_writers"))
        report.event_triggers = await tx.fetch_all(query("adoption_event_triggers"))
        report.event_references = await tx.fetch_all(query("adoption_event_references"))
    report.steps = _steps(report, tables, columns)
    return report


def _roles_needing_policies(
    rls_tables: list[TableReport],
    policies: list[Row],
    roles: dict[str, Row],
    connecting_role: str,
) -> list[dict[str, Any]]:
    """Per RLS table, the roles mailpipe uses that row-level security would leave without rows:
    not superuser nor BYPASSRLS, and no policy naming them. A policy for PUBLIC only counts when
    it does not read the request's JWT: the app's ``is_admin()`` / ``auth.role()`` policies
    give a plain database role nothing."""
    needs = []
    for table in rls_tables:
        on_table = [p for p in policies if p["table_name"] == table.name]
        named = {role for p in on_table for role in p["roles"]}
        open_to_public = any("public" in p["roles"] and not p["reads_jwt"] for p in on_table)
        missing = []
        for role in (*MAILPIPE_ROLES, connecting_role):
            info = roles.get(role)
            if info is not None and info["bypasses_rls"]:
                continue
            if role in named or open_to_public:
                continue
            missing.append(role if info is not None else f"{role} (to be created)")
        if missing:
            needs.append({"table": table.name, "roles": missing})
    return needs
