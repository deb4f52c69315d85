"""``mailpipe db adopt``: bring the app's database to what mailpipe's engine needs, additively.

The adoption files (``sql/adoption/NNNN_*.sql``, run statement by statement in autocommit under
``lock_timeout``) turn the app's shape, before or after the seed's hardening, into what
migrations 0001-0003 create; those three are then recorded in ``schema_migrations`` as
baselined by adoption (with their checksums, so the forward-only rules still hold) and 0004+
apply normally, as on a fresh database. Only an app-shaped (or already adopted) database is
accepted: anything else is refused before a single statement runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from mailpipe.adoption.preflight import OPERATOR, DatabaseShape, PreflightReport, preflight
from mailpipe.db import Database, Transaction
from mailpipe.errors import MailpipeError
from mailpipe.migrations import (
    ADVISORY_LOCK_KEY,
    Migration,
    load_migrations,
    migrate,
    run_statements,
)
from mailpipe.queries import query, sql_dir

__all__ = [
    "ADOPTION_PREFIX",
    "BASELINED",
    "AdoptionRefused",
    "AdoptionResult",
    "adopt",
    "adoption_files",
    "rollback_adoption",
]

ADOPTION_PREFIX = "adoption/"
"""How adoption files are named in ``schema_migrations`` (apart from the migrations)."""

BASELINED = ("0001_create_base_tables", "0002_harden_smtp", "0003_add_delivery_engine")
"""The migrations whose effect the adoption files produce on the app's tables."""

# Blockers adoption settles later in the runbook (not a reason to refuse): secrets move with
# `mailpipe provider adopt`, after the columns they move into exist.
_LATER = frozenset({"plaintext_credentials"})


class AdoptionRefused(MailpipeError):
    """The database is not one adoption handles; nothing was changed."""


@dataclass
class AdoptionResult:
    """What one ``adopt`` run did."""

    shape: DatabaseShape
    adoption_applied: list[str] = field(default_factory=list)
    baselined: list[str] = field(default_factory=list)
    migrations_applied: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """False for a re-run on an adopted, up-to-date database."""
        return bool(self.adoption_applied or self.baselined or self.migrations_applied)


def adoption_files(folder: Path | None = None) -> list[Migration]:
    """The adoption files in order (same naming rules as migrations)."""
    return load_migrations(folder or sql_dir() / "adoption")


def _refusal(report: PreflightReport) -> str | None:
    """Why adoption must not touch this database, or None."""
    if report.shape in (DatabaseShape.FRESH, DatabaseShape.MAILPIPE):
        return (
            f"this database is {report.shape.value}, not the app's: nothing to adopt. "
            "Run `mailpipe db migrate` instead"
        )
    blocking = [b for b in report.blockers if b.fixed_by == OPERATOR and b.code not in _LATER]
    if report.shape == DatabaseShape.UNKNOWN and not blocking:
        return "the database's shape is unknown (see `mailpipe db preflight`)"
    if blocking:
        return "; ".join(f"{b.code}: {b.message} ({b.action})" for b in blocking)
    return None


async def adopt(db: Database, *, lock_timeout: str = "5s") -> AdoptionResult:
    """Adopt the app's database (idempotent: a re-run on an adopted database changes nothing).

    Raises :class:`AdoptionRefused` (nothing changed) for a database that is neither the app's
    nor already adopted, or when preflight finds a blocker only the operator can settle.
    """
    started = time.perf_counter()
    db.require_session("mailpipe db adopt (its advisory lock and session settings)")
    report = await preflight(db)
    reason = _refusal(report)
    if reason is not None:
        raise AdoptionRefused(f"adoption refused, nothing changed: {reason}")
    result = AdoptionResult(shape=report.shape)
    files = adoption_files()
    baselines = {m.name: m for m in load_migrations() if m.name in BASELINED}
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            await conn.execute("SELECT set_config('lock_timeout', %s, false)", (lock_timeout,))
            await _prepare_migrations_table(conn)
            recorded = {
                r["name"]: r["checksum"]
                for r in await conn.fetch_all("SELECT name, checksum FROM schema_migrations")
            }
            for adoption in files:
                name = ADOPTION_PREFIX + adoption.name
                if name in recorded:
                    if recorded[name] != adoption.checksum:
                        raise MailpipeError(
                            f"{adoption.path.name} was edited after it was applied here; "
                            "adoption files are never edited: put the change in a new file"
                        )
                    continue
                file_started = time.perf_counter()
                await _run_with_session_setting_check(conn, adoption)
                await _record(conn, name, adoption.checksum, file_started, None)
                result.adoption_applied.append(name)
            for name, migration in baselines.items():
                if name not in recorded:
                    await _record(conn, name, migration.checksum, time.perf_counter(), "adoption")
                    result.baselined.append(name)
        finally:
            await conn.execute("RESET lock_timeout")
            await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    result.migrations_applied = await migrate(db)
    await db.execute(query("adoption_fix_search_paths"))
    await db.execute(query("adoption_checks_view"))
    result.seconds = time.perf_counter() - started
    return result


async def rollback_adoption(db: Database, *, lock_timeout: str = "5s") -> None:
    """Take back what ``adopt`` added (``sql/adoption/rollback/``), in one transaction.

    Refused while mailpipe's workers hold events (stop its deployments, then `mailpipe cutover
    --rollback` first). The enum values and the two roles stay (see the file).
    """
    db.require_session("mailpipe db adopt --rollback (its advisory lock)")
    held = await db.fetch_value(
        "SELECT count(*) FROM communication_events WHERE status = 'processing'"
        " AND locked_by IS NOT NULL AND lease_expires_at > now()"
    )
    if held:
        raise AdoptionRefused(
            f"rollback refused, nothing changed: mailpipe's workers hold {held} events under a "
            "live lease; stop mailpipe's deployments, then `mailpipe cutover --rollback`"
        )
    [step] = load_migrations(sql_dir() / "adoption" / "rollback")
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            await conn.execute("BEGIN")
            try:
                await conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
                await conn.execute(step.sql)
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


async def _prepare_migrations_table(conn: Transaction) -> None:
    """schema_migrations with a ``baselined_by`` column; out of Supabase's Data API: RLS on
    with no policy, and no grant to the API roles (they would otherwise see it in ``public``)."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, checksum text NOT "
        "NULL, applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL)"
    )
    await conn.execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS baselined_by text")
    await conn.execute("ALTER TABLE schema_migrations ENABLE ROW LEVEL SECURITY")
    await conn.execute(
        """
        DO $$
        DECLARE r text;
        BEGIN
            FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
                    EXECUTE format('REVOKE ALL ON schema_migrations FROM %I', r);
                END IF;
            END LOOP;
        END
        $$
        """
    )


async def _run_with_session_setting_check(conn: Transaction, adoption: Migration) -> None:
    try:
        await run_statements(conn, adoption)
    finally:
        # A failed backfill must not leave the app's triggers off on a pooled connection.
        await conn.execute("RESET session_replication_role")


async def _record(
    conn: Transaction, name: str, checksum: str, started: float, baselined_by: str | None
) -> None:
    await conn.execute(
        "INSERT INTO schema_migrations (name, checksum, duration_ms, baselined_by)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
        (name, checksum, int((time.perf_counter() - started) * 1000), baselined_by),
    )
