"""Preflight: what adopting a database would meet, read without changing anything.

It classifies the target (fresh, mailpipe's own, the app's shape before or after the seed's
hardening, or unknown), then lists what blocks adoption and what each adoption step would lock
or rewrite. Every query runs in one ``READ ONLY`` transaction with short lock and statement
timeouts, so it is safe on production: it cannot write, and it never queues behind a lock.
Secrets are judged inside Postgres; only provider names and counts come back.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from mailpipe.adoption import SEED_JOBS
from mailpipe.db import Database, Row, Transaction, url_host_port
from mailpipe.errors import DatabaseError
from mailpipe.migrations import load_migrations
from mailpipe.queries import query
from mailpipe.queue import STATUSES

__all__ = [
    "Blocker",
    "ConnectionMode",
    "DatabaseShape",
    "Finding",
    "PreflightReport",
    "Shape",
    "Step",
    "TableReport",
    "connection_mode",
    "preflight",
]

TABLES = (
    "communication_events",
    "smtp_provider_configs",
    "smtp_connection_audit",
    "smtp_delivery_confirmations",
    "rate_limit_counters",
)
"""The tables mailpipe creates that the app (or the seed) also has."""

APP_TABLES = ("communication_logs", "email_delivery_confirmations", "email_processing_queue")
"""The app's own tables around the outbox: kept as they are, reported for their locks and RLS."""

MAILPIPE_ROLES = ("mailpipe_app", "mailpipe_analyst")
SUPABASE_ROLES = ("anon", "authenticated", "service_role")

# Columns whose values are secrets when found in clear in smtp_provider_configs.
_SECRET_COLUMN = re.compile(r"(password|secret|api_key|token)", re.IGNORECASE)

ADOPT = "mailpipe db adopt"
PROVIDER_ADOPT = "mailpipe provider adopt"
# How adoption files are named in schema_migrations (mailpipe.adoption.adopt).
ADOPTION_PREFIX = "adoption/"
OPERATOR = "operator"


class Shape(StrEnum):
    """What one table looks like."""

    ABSENT = "absent"
    MAILPIPE = "mailpipe"
    APP = "app"
    APP_HARDENED = "app_hardened"
    UNKNOWN = "unknown"


class DatabaseShape(StrEnum):
    """What the whole target looks like."""

    FRESH = "fresh"
    MAILPIPE = "mailpipe"
    APP_BEFORE_HARDENING = "app_before_hardening"
    APP_AFTER_HARDENING = "app_after_hardening"
    ADOPTING = "adopting"
    ADOPTED = "adopted"
    UNKNOWN = "unknown"


class ConnectionMode(StrEnum):
    """How we reach Postgres (see :func:`connection_mode` for the heuristic)."""

    DIRECT = "direct"
    SESSION_POOLER = "session_pooler"
    TRANSACTION_POOLER = "transaction_pooler"


@dataclass(frozen=True)
class _Signature:
    """Columns that identify who made a table: ``app`` (the app's own), ``seed`` (what the
    seed's hardening adds to it) and ``mailpipe`` (what mailpipe's 0001/0002 create)."""

    app: frozenset[str]
    seed: frozenset[str]
    mailpipe: frozenset[str]


_SIGNATURES: dict[str, _Signature] = {
    "communication_events": _Signature(
        app=frozenset({"template_id", "variables", "order_id", "email_type"}),
        seed=frozenset(),
        mailpipe=frozenset(
            {"event_type", "recipient_email", "template_key", "status", "payload", "scheduled_at"}
        ),
    ),
    "smtp_provider_configs": _Signature(
        app=frozenset({"name", "password_encrypted", "is_primary"}),
        seed=frozenset(
            {"provider_name", "status", "suspended_until", "credentials", "last_checked"}
        ),
        mailpipe=frozenset({"host", "port", "from_address"}),
    ),
    "smtp_connection_audit": _Signature(
        app=frozenset({"provider_name", "connection_success"}),
        seed=frozenset({"ip_address", "result", "updated_at"}),
        mailpipe=frozenset({"host", "success", "error_text"}),
    ),
    "smtp_delivery_confirmations": _Signature(
        app=frozenset({"email_id", "provider_used", "delivery_status"}),
        seed=frozenset({"provider_name", "status"}),
        mailpipe=frozenset({"communication_event_id", "smtp_response"}),
    ),
    # The app has no such table: only the seed creates it.
    "rate_limit_counters": _Signature(
        app=frozenset(),
        seed=frozenset({"identifier", "identifier_type", "count", "window_start"}),
        mailpipe=frozenset({"scope", "key", "window_size"}),
    ),
}


@dataclass(frozen=True)
class Blocker:
    """Something that must be settled before adoption can go on, and how."""

    code: str
    message: str
    action: str
    fixed_by: str


@dataclass(frozen=True)
class Finding:
    """Worth knowing before adopting, but not blocking."""

    code: str
    message: str


@dataclass(frozen=True)
class Step:
    """One adoption step on one table: the lock it takes and whether it rewrites rows."""

    table: str
    action: str
    lock: str
    rewrites: str
    implemented: bool = True


@dataclass
class TableReport:
    """One table: its shape, id type, size and row-level security."""

    name: str
    shape: Shape
    id_type: str | None = None
    estimated_rows: int | None = None
    total_bytes: int | None = None
    rls_enabled: bool | None = None
    reason: str | None = None


@dataclass
class PreflightReport:
    """Everything preflight found; ``go`` is True when nothing blocks adoption."""

    shape: DatabaseShape
    connection: dict[str, Any]
    tables: list[TableReport]
    applied_migrations: list[str] = field(default_factory=list)
    pending_migrations: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    status_type: str | None = None
    status_values: list[str] = field(default_factory=list)
    priority_type: str | None = None
    unknown_statuses: dict[str, int] = field(default_factory=dict)
    template_keys: dict[str, int] = field(default_factory=dict)
    plaintext_secrets: dict[str, Any] = field(default_factory=dict)
    policies: list[Row] = field(default_factory=list)
    roles_needing_policies: list[dict[str, Any]] = field(default_factory=list)
    cron: dict[str, Any] = field(default_factory=dict)
    net_queue: int | None = None
    event_writers: list[Row] = field(default_factory=list)
    event_triggers: list[Row] = field(default_factory=list)
    event_references: list[Row] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def go(self) -> bool:
        """True when adoption may proceed: no blocker."""
        return not self.blockers

    def blocker_codes(self) -> list[str]:
        """The blockers' codes, in report order (for scripts and tests)."""
        return [b.code for b in self.blockers]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` (pass through :func:`mailpipe.serialization.to_jsonable`)."""
        data = asdict(self)
        data["go"] = self.go
        return data


_APP_SHAPES = (
    DatabaseShape.APP_BEFORE_HARDENING,
    DatabaseShape.APP_AFTER_HARDENING,
    DatabaseShape.ADOPTING,
)


def _table_shape(name: str, columns: dict[str, str]) -> tuple[Shape, str | None]:
    """Classify one table from its columns; the reason says why when it is unknown."""
    if not columns:
        return Shape.ABSENT, None
    signature = _SIGNATURES[name]
    present = set(columns)
    if signature.app and signature.app <= present:
        added = signature.seed & present
        if not signature.seed or added == signature.seed:
            return (Shape.APP_HARDENED if signature.seed else Shape.APP), None
        if not added:
            return Shape.APP, None
        missing = sorted(signature.seed - present)
        return Shape.UNKNOWN, (
            f"the app's table with only part of the seed's columns "
            f"(has {', '.join(sorted(added))}; lacks {', '.join(missing)})"
        )
    if not signature.app and signature.seed <= present:
        return Shape.APP_HARDENED, None
    if signature.mailpipe <= present:
        return Shape.MAILPIPE, None
    known = signature.app or signature.seed
    return Shape.UNKNOWN, (
        f"columns {', '.join(sorted(present))} match neither mailpipe's "
        f"(needs {', '.join(sorted(signature.mailpipe))}) nor the app's "
        f"(needs {', '.join(sorted(known))})"
    )


def _database_shape(
    tables: dict[str, TableReport], has_migrations_table: bool
) -> tuple[DatabaseShape, str | None]:
    shapes = {name: t.shape for name, t in tables.items()}
    present = {name: s for name, s in shapes.items() if s != Shape.ABSENT}
    if not present:
        return (DatabaseShape.MAILPIPE if has_migrations_table else DatabaseShape.FRESH), None
    if all(s == Shape.MAILPIPE for s in present.values()):
        return DatabaseShape.MAILPIPE, None
    # The seed adds no column to communication_events: the other four tables tell the state.
    hardened = TABLES[1:]
    if shapes["communication_events"] == Shape.APP:
        before = [shapes[t] for t in hardened] == [Shape.APP] * 3 + [Shape.ABSENT]
        if before:
            return DatabaseShape.APP_BEFORE_HARDENING, None
        if all(shapes[t] == Shape.APP_HARDENED for t in hardened):
            return DatabaseShape.APP_AFTER_HARDENING, None
    described = ", ".join(f"{name}: {shape}" for name, shape in shapes.items())
    return DatabaseShape.UNKNOWN, described


def connection_mode(
    url: str, first_pid: int, second_pid: int, server_port: int | None
) -> tuple[ConnectionMode, str]:
    """Direct, session pooler or transaction pooler, and the evidence.

    The heuristic, strongest evidence first:

    1. two statements in separate transactions on one client connection served by different
       backends (``pg_backend_pid()``): a transaction pooler (PgBouncer or Supavisor in
       transaction mode), whatever the port;
    2. port 6543 in the URL: Supabase's transaction pooler (Supavisor), even if both statements
       happened to land on one backend;
    3. a host under ``pooler.supabase.com``, or a URL port that differs from the port the server
       itself listens on (``inet_server_port()``): a proxy keeping one backend per client, i.e.
       a session pooler;
    4. otherwise a direct connection.
    """
    host, port = _host_port(url)
    if first_pid != second_pid:
        return ConnectionMode.TRANSACTION_POOLER, (
            f"one client connection was served by two backends ({first_pid}, {second_pid})"
        )
    if port == 6543:
        return ConnectionMode.TRANSACTION_POOLER, "port 6543 (Supabase's transaction pooler)"
    if host and host.endswith("pooler.supabase.com"):
        return ConnectionMode.SESSION_POOLER, f"host {host} is Supabase's pooler on port {port}"
    if port is not None and server_port is not None and port != server_port:
        return ConnectionMode.SESSION_POOLER, (
            f"connected to port {port}, the server listens on {server_port}: a proxy in between"
        )
    return ConnectionMode.DIRECT, "same backend across transactions, no pooler port or host"


def _host_port(url: str) -> tuple[str | None, int | None]:
    return url_host_port(url)


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


def _steps(
    report: PreflightReport, tables: dict[str, TableReport], columns: dict[str, dict[str, str]]
) -> list[Step]:
    """The adoption steps for this shape, each with its lock and what it rewrites."""
    if report.shape == DatabaseShape.FRESH:
        return [
            Step(
                "*", "mailpipe db migrate creates every table", "none (new tables)", "nothing", True
            )
        ]
    if report.shape in (DatabaseShape.MAILPIPE, DatabaseShape.ADOPTED):
        return [
            Step("*", f"mailpipe db migrate applies {name}", "per migration", "see the file", True)
            for name in report.pending_migrations
        ]
    if report.shape not in _APP_SHAPES:
        return []
    brief = "ACCESS EXCLUSIVE, brief (catalog only; under lock_timeout)"
    scan = "SHARE UPDATE EXCLUSIVE (reads and writes go on)"
    events = tables["communication_events"].estimated_rows or 0
    steps = [
        Step(
            "communication_events",
            "add mailpipe's columns (message_id, idempotency_key, "
            "lease_expires_at, ...), nullable or with constant defaults",
            brief,
            "no rows",
        ),
        Step(
            "communication_events",
            "map the app's columns: template_id -> template_key, "
            "variables/template_variables/payload -> template data, text priority -> "
            "mailpipe's order (configurable, the app's columns kept)",
            "row locks, batches of 1000",
            f"~{events} rows updated in batches",
        ),
        Step(
            "communication_events",
            "add CHECK constraints NOT VALID, then VALIDATE",
            scan,
            "no rows (one scan)",
        ),
        Step(
            "communication_events",
            "create the claim and idempotency indexes CONCURRENTLY",
            scan,
            "no rows (one scan per index)",
        ),
        Step(
            "smtp_provider_configs",
            "move each password into a Prefect Secret block or an "
            "env var and store the reference (mailpipe provider adopt)",
            "row locks",
            f"{report.plaintext_secrets.get('providers', 0)} rows",
        ),
        Step(
            "smtp_provider_configs",
            "add mailpipe's provider columns (db adopt); the references-only CHECKs NOT VALID + "
            "VALIDATE come with `mailpipe provider adopt --finalize`",
            brief,
            "no rows",
        ),
        Step(
            "smtp_delivery_confirmations",
            "add communication_event_id "
            f"({tables['communication_events'].id_type}) with its foreign key NOT VALID, "
            "then VALIDATE",
            scan,
            "no rows",
        ),
        Step("smtp_connection_audit", "add mailpipe's audit columns", brief, "no rows"),
    ]
    if "status" in columns["communication_events"] and report.status_type != "text":
        steps.insert(
            0,
            Step(
                "communication_events",
                f"ALTER TYPE {report.status_type} ADD VALUE for mailpipe's statuses",
                "none on the table",
                "no rows",
            ),
        )
    if report.shape == DatabaseShape.APP_AFTER_HARDENING:
        steps += [
            Step(
                "communication_events",
                "replace the seed's validate_communication_event "
                "trigger with one that accepts the app's template_id",
                "SHARE ROW EXCLUSIVE, brief",
                "no rows",
            ),
            *(
                Step(
                    table,
                    f"{column} timestamp -> timestamptz (values read as UTC)",
                    "ACCESS EXCLUSIVE for the rewrite",
                    f"whole table (~{tables[table].estimated_rows or 0} rows)",
                )
                for table in TABLES
                for column, data_type in columns[table].items()
                # The audit is big and mailpipe never reads its updated_at: left as it is.
                if data_type == "timestamp without time zone" and table != "smtp_connection_audit"
            ),
        ]
    else:
        steps.append(
            Step(
                "rate_limit_counters",
                "create mailpipe's counters table",
                "none (new table)",
                "nothing",
            )
        )
    return steps


def _judge(report: PreflightReport) -> None:
    """Turn what was found into blockers (with what to do) and findings."""
    add = report.blockers.append
    note = report.findings.append
    if report.connection["mode"] == ConnectionMode.TRANSACTION_POOLER:
        add(
            Blocker(
                "transaction_pooler",
                f"connected through a transaction pooler ({report.connection['evidence']}): "
                "migrations take an advisory lock and the workers LISTEN, both need one session",
                "use the session pooler (port 5432 on the pooler host) or the direct connection "
                "for adoption, migrations and workers",
                OPERATOR,
            )
        )

    if report.shape == DatabaseShape.UNKNOWN:
        for table in report.tables:
            if table.shape == Shape.UNKNOWN:
                add(
                    Blocker(
                        "unknown_shape",
                        f"{table.name}: {table.reason}",
                        "preflight does not know this table: adoption refuses it. Point "
                        "DATABASE_URL at the right database, or move this table out of the schema",
                        OPERATOR,
                    )
                )
        if not any(b.code == "unknown_shape" for b in report.blockers):
            shapes = ", ".join(f"{t.name}: {t.shape}" for t in report.tables[: len(TABLES)])
            add(
                Blocker(
                    "mixed_shapes",
                    f"tables of different origins side by side ({shapes})",
                    "adoption only handles a database that is wholly the app's (before or after "
                    "the seed's hardening) or wholly mailpipe's: restore a consistent state first",
                    OPERATOR,
                )
            )
        return

    if report.shape in (DatabaseShape.MAILPIPE, DatabaseShape.ADOPTED):
        known = {m.name for m in load_migrations()}
        unknown = [
            n
            for n in report.applied_migrations
            if n not in known and not n.startswith(ADOPTION_PREFIX)
        ]
        if unknown:
            add(
                Blocker(
                    "unknown_migrations",
                    "schema_migrations records migrations this mailpipe does not have: "
                    + ", ".join(unknown),
                    "run the mailpipe version that applied them (a newer one)",
                    OPERATOR,
                )
            )
        if report.pending_migrations:
            note(
                Finding(
                    "pending_migrations",
                    f"{len(report.pending_migrations)} migrations to apply: "
                    "run `mailpipe db migrate`",
                )
            )
        if report.shape == DatabaseShape.ADOPTED:
            _judge_adopted(report)
        return
    if report.shape == DatabaseShape.FRESH:
        note(Finding("fresh", "no mailpipe table yet: `mailpipe db migrate` creates them"))
        return

    _judge_app(report)


def _judge_adopted(report: PreflightReport) -> None:
    """An adopted database: only what is left of the runbook (secrets, cron) is reported."""
    secrets = report.plaintext_secrets
    if secrets.get("providers"):
        report.blockers.append(
            Blocker(
                "plaintext_credentials",
                f"{secrets['providers']} providers hold credentials in clear "
                f"({', '.join(secrets['provider_names'])}; "
                f"columns {', '.join(secrets['columns'])})",
                "move each into a Prefect Secret block or an env var and store only the reference "
                "(`mailpipe provider adopt`)",
                PROVIDER_ADOPT,
            )
        )
    _note_cron(report)


def _judge_app(report: PreflightReport) -> None:
    """Blockers and findings on the app's shape (before or after the seed's hardening)."""
    add = report.blockers.append
    tables = {t.name: t for t in report.tables}
    events = tables["communication_events"]
    if report.shape == DatabaseShape.ADOPTING:
        report.findings.append(
            Finding(
                "adoption_incomplete",
                "`mailpipe db adopt` started here and did not finish: run it again (each of its "
                "statements is idempotent)",
            )
        )

    if report.applied_migrations and report.shape != DatabaseShape.ADOPTING:
        add(
            Blocker(
                "mailpipe_partially_applied",
                f"schema_migrations records {', '.join(report.applied_migrations)} on the app's "
                "tables: an earlier `mailpipe db migrate` ran here, skipped the app's existing "
                "tables (CREATE TABLE IF NOT EXISTS) and stopped",
                "those records changed nothing the app uses: delete them (DELETE FROM "
                "schema_migrations) before adopting; on the app's database run `mailpipe db "
                "adopt`, never `mailpipe db migrate` first",
                OPERATOR,
            )
        )
    if events.id_type and events.id_type not in ("bigint", "integer"):
        add(
            Blocker(
                "uuid_ids" if events.id_type == "uuid" else "id_type",
                f"communication_events.id is {events.id_type}; mailpipe's engine and migrations "
                "assume bigint ids (claims, --id, confirmations' foreign keys)",
                "mailpipe works with either id type (event_ids()); `mailpipe db adopt` types "
                "its new references like this id",
                ADOPT,
            )
        )
    missing = [s for s in STATUSES if s not in report.status_values]
    if report.status_values and missing:
        add(
            Blocker(
                "enum_status",
                f"communication_events.status is the enum {report.status_type} without "
                f"the values mailpipe writes: {', '.join(missing)}",
                "adoption adds them (ALTER TYPE ... ADD VALUE: no table lock, cannot be "
                "undone); the app's code that reads status must accept them",
                ADOPT,
            )
        )
    if report.unknown_statuses:
        counted = ", ".join(f"{s} ({n})" for s, n in sorted(report.unknown_statuses.items()))
        add(
            Blocker(
                "unknown_statuses",
                f"statuses in use that mailpipe does not know: {counted}",
                "map each to one of mailpipe's statuses (" + ", ".join(STATUSES) + ") or settle "
                "those rows before adopting: `mailpipe db adopt` refuses while they remain "
                "(mailpipe would neither send nor report them)",
                OPERATOR,
            )
        )
    if report.priority_type == "text":
        add(
            Blocker(
                "text_priority",
                "communication_events.priority is text (low, normal, high, urgent); mailpipe "
                "orders claims by an integer 0-9",
                "adoption maps the app's priorities to mailpipe's order, keeping the app's column",
                ADOPT,
            )
        )
    key_less = [w["function"] for w in report.event_writers if not w["sets_template_key"]]
    counts = report.template_keys
    add(
        Blocker(
            "template_columns",
            "template data is in variables, template_variables or payload, and "
            f"{counts.get('without_key', 0)} events have no template_key "
            f"({counts.get('pending_without_key', 0)} still queued or processing)"
            + (f"; writers that set none: {', '.join(key_less)}" if key_less else ""),
            "adoption maps template_id to template_key and the app's data columns to mailpipe's, "
            "so the app's writers keep producing deliverable events",
            ADOPT,
        )
    )
    secrets = report.plaintext_secrets
    if secrets.get("providers"):
        add(
            Blocker(
                "plaintext_credentials",
                f"{secrets['providers']} providers hold credentials in clear "
                f"({', '.join(secrets['provider_names'])}; "
                f"columns {', '.join(secrets['columns'])})",
                "move each into a Prefect Secret block or an env var and store only the reference "
                "(`mailpipe provider adopt`, after `mailpipe db adopt`); the references-only CHECK "
                "is refused while any remains",
                PROVIDER_ADOPT,
            )
        )
    if report.shape == DatabaseShape.APP_AFTER_HARDENING:
        report.findings.append(
            Finding(
                "timestamp_left",
                "smtp_connection_audit.updated_at stays timestamp without time zone: the audit "
                "is big and mailpipe never reads that column (no rewrite)",
            )
        )
    naive = [s for s in report.steps if s.action.endswith("timestamptz (values read as UTC)")]
    if naive:
        add(
            Blocker(
                "timestamp_without_time_zone",
                "columns stored as timestamp without time zone: "
                + ", ".join(f"{s.table}.{s.action.split()[0]}" for s in naive),
                "adoption converts them to timestamptz reading the values as UTC (a rewrite of "
                "these small tables); check the app wrote them in UTC",
                ADOPT,
            )
        )
    if report.shape == DatabaseShape.APP_AFTER_HARDENING:
        failed = report.template_keys.get("failed_by_validation", 0)
        add(
            Blocker(
                "validation_trigger",
                "the seed's validate_communication_event trigger (BEFORE INSERT OR UPDATE) fails "
                f"every event without template_key; {failed} events were failed that way",
                "adoption replaces it with one that accepts template_id; the failed events can be "
                "re-queued after (`mailpipe queue retry`)",
                ADOPT,
            )
        )

    # Findings: what adoption and cutover must respect, not blocking.
    _note_cron(report)
    _note_app(report)


def _note_cron(report: PreflightReport) -> None:
    """Findings about pg_cron and pg_net (before and after adoption)."""
    note = report.findings.append
    jobs = report.cron.get("jobs", [])
    active_seed = [j["job_name"] for j in jobs if j["seed_job"] and j["active"]]
    if active_seed:
        note(
            Finding(
                "cron_jobs_active",
                f"pg_cron runs {', '.join(active_seed)}: run `mailpipe cutover` before starting "
                "mailpipe's deployments (never both pipelines at once)",
            )
        )
    others = [j["job_name"] for j in jobs if not j["seed_job"] and j["touches_email"]]
    if others:
        note(
            Finding(
                "other_email_jobs",
                f"other pg_cron jobs touch email: {', '.join(others)}: pause them too "
                "(`mailpipe cutover --job NAME`) if they send from communication_events",
            )
        )
    tokens = [j["job_name"] for j in jobs if j["inline_bearer_token"]]
    if tokens:
        note(
            Finding(
                "bearer_tokens_in_cron",
                f"{len(tokens)} pg_cron job commands carry a bearer key in clear "
                f"({', '.join(tokens)}); `mailpipe cutover --finalize` removes them, then rotate "
                "the key",
            )
        )
    if report.net_queue:
        note(
            Finding("net_queue", f"{report.net_queue} HTTP calls queued in net.http_request_queue")
        )


def _note_app(report: PreflightReport) -> None:
    """Findings about the app's triggers, references and policies."""
    note = report.findings.append
    for trigger in report.event_triggers:
        if trigger["notifies"]:
            note(
                Finding(
                    "instant_notify",
                    f"trigger {trigger['trigger_name']} notifies '{trigger['notifies']}' "
                    "on insert: "
                    "if something still listens and sends, mail goes out twice; stop that listener "
                    "at cutover",
                )
            )
    for ref in report.event_references:
        if ref["on_delete"] == "CASCADE":
            note(
                Finding(
                    "cascade_delete",
                    f"{ref['table_name']} rows are deleted with their event (ON DELETE CASCADE): "
                    "purging events also purges the app's rows there",
                )
            )
    by_roles: dict[tuple[str, ...], list[str]] = {}
    for need in report.roles_needing_policies:
        by_roles.setdefault(tuple(need["roles"]), []).append(need["table"])
    for roles, tables_without in by_roles.items():
        note(
            Finding(
                "rls_policy_needed",
                f"row-level security gives {', '.join(roles)} no rows on "
                f"{', '.join(tables_without)}: adoption adds policies for them",
            )
        )
