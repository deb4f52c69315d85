"""The migration runner: applies ``sql/migrations/NNNN_*.sql`` in order, each exactly once.

Forward-only: an applied file is recorded with its checksum and must never change; a runner that
finds an edited file refuses to go on. Concurrent runners are serialised by an advisory lock, so
two workers starting at once cannot apply the same file twice.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mailpipe.db import Database
from mailpipe.errors import MigrationError
from mailpipe.queries import sql_dir

# Any constant works: it only has to be the same for every mailpipe runner.
_ADVISORY_LOCK_KEY = 0x6D61696C70697065  # "mailpipe"
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    name: str
    path: Path
    sql: str

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
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            await conn.execute(_CREATE_TABLE)
            rows = await conn.fetch_all("SELECT name, checksum FROM schema_migrations")
            applied = {r["name"]: r["checksum"] for r in rows}
            for migration in migrations:
                if migration.name in applied:
                    _check_unchanged(migration, applied[migration.name])
                    continue
                started = time.perf_counter()
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
