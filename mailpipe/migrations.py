"""The migration runner: applies ``sql/migrations/NNNN_*.sql`` in order, each exactly once.

Forward-only: an applied file is recorded with its checksum and must never change; a runner that
finds an edited file refuses to go on. Concurrent runners are serialised by an advisory lock, so
two workers starting at once cannot apply the same file twice.

A file whose first line is ``-- mailpipe: no-transaction`` runs one statement at a time in
autocommit (``ALTER TYPE ... ADD VALUE`` then using the value, ``CREATE INDEX CONCURRENTLY``,
batched backfills that commit): its statements must each be idempotent, since a failure leaves
the ones before it applied and the file is run again from the top.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mailpipe.db import Database, Transaction
from mailpipe.errors import DatabaseError, MigrationError
from mailpipe.queries import sql_dir

# Any constant works: it only has to be the same for every mailpipe runner.
_ADVISORY_LOCK_KEY = 0x6D61696C70697065  # "mailpipe"
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
NO_TRANSACTION = "-- mailpipe: no-transaction"
ADVISORY_LOCK_KEY = _ADVISORY_LOCK_KEY

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
)
"""


# The app's outbox (docs/adopting-facts.md): adopted with `mailpipe db adopt`, never migrated.
_APP_SHAPED = """
SELECT EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'communication_events'
                  AND column_name = 'template_id')
"""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    name: str
    path: Path
    sql: str

    @property
    def transactional(self) -> bool:
        """False for a file headed ``-- mailpipe: no-transaction`` (run statement by statement)."""
        return not self.sql.lstrip().startswith(NO_TRANSACTION)

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text: an applied migration must keep it."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    """Where one migration stands in a database."""

    name: str
    applied_at: datetime | None
    edited: bool

    @property
    def state(self) -> str:
        """``applied``, ``pending`` or ``edited`` (applied, but the file changed since)."""
        if self.applied_at is None:
            return "pending"
        return "edited" if self.edited else "applied"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """Every migration file in order; refuses gaps and badly named files."""
    folder = folder or sql_dir() / "migrations"
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        if not _FILE.match(path.name):
            raise MigrationError(
                f"{path.name}: migration files are named NNNN_verb_object.sql (e.g. 0004_add_x.sql)"
            )
        migrations.append(Migration(path.stem, path, path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(migrations, start=1):
        if int(migration.name[:4]) != expected:
            raise MigrationError(f"{migration.path.name}: expected number {expected:04d} here")
    return migrations


async def migration_status(db: Database, folder: Path | None = None) -> list[MigrationStatus]:
    """Applied and pending migrations, in order."""
    applied = await _applied(db)
    return [
        MigrationStatus(
            m.name,
            applied[m.name][1] if m.name in applied else None,
            m.name in applied and applied[m.name][0] != m.checksum,
        )
        for m in load_migrations(folder)
    ]


async def migrate(
    db: Database, folder: Path | None = None, *, target: str | None = None
) -> list[str]:
    """Apply pending migrations (up to ``target`` when given); returns the names applied."""
    migrations = load_migrations(folder)
    if target is not None and target not in {m.name for m in migrations}:
        raise MigrationError(f"no migration named {target!r}; see `mailpipe db status`")
    done: list[str] = []
    db.require_session("mailpipe db migrate (its advisory lock)")
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            if await conn.fetch_value(_APP_SHAPED) and not await _adopted(conn):
                # 0001's CREATE TABLE IF NOT EXISTS would skip the app's tables and 0002 fail.
                raise MigrationError(
                    "this is the app's database (communication_events has template_id), not "
                    "one mailpipe created: run `mailpipe db adopt` (see `mailpipe db preflight`); "
                    "nothing was changed"
                )
            await conn.execute(_CREATE_TABLE)
            rows = await conn.fetch_all("SELECT name, checksum FROM schema_migrations")
            applied = {r["name"]: r["checksum"] for r in rows}
            for migration in migrations:
                if migration.name in applied:
                    _check_unchanged(migration, applied[migration.name])
                    continue
                started = time.perf_counter()
                if not migration.transactional:
                    await run_statements(conn, migration)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum, duration_ms)"
                        " VALUES (%s, %s, %s)",
                        (
                            migration.name,
                            migration.checksum,
                            int((time.perf_counter() - started) * 1000),
                        ),
                    )
                    done.append(migration.name)
                    if migration.name == target:
                        break
                    continue
                await conn.execute("BEGIN")
                try:
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum, duration_ms)"
                        " VALUES (%s, %s, %s)",
                        (
                            migration.name,
                            migration.checksum,
                            int((time.perf_counter() - started) * 1000),
                        ),
                    )
                    await conn.execute("COMMIT")
                except BaseException as exc:
                    await conn.execute("ROLLBACK")
                    if isinstance(exc, Exception):
                        raise MigrationError(f"{migration.path.name} failed: {exc}") from exc
                    raise
                done.append(migration.name)
                if migration.name == target:
                    break
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    return done


_CONCURRENT_INDEX = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)",
    re.IGNORECASE,
)


async def run_statements(conn: Transaction, migration: Migration) -> None:
    """Run a no-transaction file statement by statement in autocommit.

    A ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` that failed before leaves an invalid index
    that ``IF NOT EXISTS`` would keep: it is dropped first so the build starts over.
    """
    for number, statement in enumerate(split_statements(migration.sql), start=1):
        try:
            match = _CONCURRENT_INDEX.match(_strip_comments(statement))
            if match:
                valid = await conn.fetch_value(
                    "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                    (match.group(1),),
                )
                if valid is False:
                    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {match.group(1)}")
            await conn.execute(statement)
        except DatabaseError as exc:
            first_line = _strip_comments(statement).strip().splitlines()[0][:100]
            raise MigrationError(
                f"{migration.path.name}, statement {number} ({first_line} ...) failed: {exc}. "
                "The statements before it stay applied; each is idempotent: fix the cause and "
                "run again"
            ) from exc


def _strip_comments(statement: str) -> str:
    return "\n".join(line for line in statement.splitlines() if not line.lstrip().startswith("--"))


def split_statements(sql: str) -> list[str]:
    """Split SQL text into statements at top-level semicolons, respecting quotes ('', ""),
    dollar-quoted bodies ($tag$ ... $tag$) and comments; empty statements are dropped."""
    statements: list[str] = []
    start = i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end == -1 else end + 2
        elif ch in ("'", '"'):
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote
                        end += 2
                        continue
                    break
                end += 1
            i = end + 1
        elif ch == "$":
            tag = _DOLLAR_TAG.match(sql, i)
            if tag:
                end = sql.find(tag.group(0), tag.end())
                i = n if end == -1 else end + len(tag.group(0))
            else:
                i += 1
        elif ch == ";":
            statements.append(sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if _strip_comments(s).strip()]


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


async def _adopted(conn: Transaction) -> bool:
    """Whether `mailpipe db adopt` baselined this database (0003 recorded)."""
    if not await conn.fetch_value("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return False
    return bool(
        await conn.fetch_value(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations"
            " WHERE name = '0003_add_delivery_engine')"
        )
    )


def _check_unchanged(migration: Migration, recorded_checksum: str) -> None:
    if recorded_checksum != migration.checksum:
        raise MigrationError(
            f"{migration.path.name} was edited after it was applied (its checksum changed). "
            "Applied migrations are never edited: restore the file and put the change in a new "
            "migration."
        )


async def _applied(db: Database) -> dict[str, tuple[str, datetime]]:
    exists = await db.fetch_value("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await db.fetch_all("SELECT name, checksum, applied_at FROM schema_migrations")
    return {r["name"]: (r["checksum"], r["applied_at"]) for r in rows}
