"""The database of the Prefect server ``mailpipe up`` starts: Postgres rather than SQLite.

Prefect's default SQLite database serialises every write; with a few workers, a serve process
and the UI it answers "database is locked". ``up`` therefore gives its server a database of its
own, ``prefect``, on the embedded Postgres (which ships ``pg_trgm``, an extension Prefect
needs), or on the server ``DATABASE_URL`` names when the operator asks for it
(``--prefect-db postgres``: mailpipe's role then needs CREATEDB, or the database must exist).
``PREFECT_SERVER_DATABASE_CONNECTION_URL``, when set, is always used as it is.
"""

from __future__ import annotations

import asyncio
import os
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from mailpipe.config import Settings, get_settings
from mailpipe.errors import ConfigError

PREFECT_DATABASE = "prefect"
CONNECTION_URL_VARIABLE = "PREFECT_SERVER_DATABASE_CONNECTION_URL"


class PrefectDatabase(StrEnum):
    """Where ``up``'s Prefect server keeps its data."""

    AUTO = "auto"  # the embedded Postgres when mailpipe uses it, else SQLite
    POSTGRES = "postgres"  # a `prefect` database on the Postgres mailpipe uses
    SQLITE = "sqlite"  # Prefect's default, in the server's Prefect home


def asyncpg_url(url: str, database: str) -> str:
    """``url`` (a libpq URL) as SQLAlchemy's asyncpg URL of ``database`` on the same server."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError(
            f"cannot derive the Prefect server's database from a {parts.scheme!r} URL: set "
            f"{CONNECTION_URL_VARIABLE}=postgresql+asyncpg://... yourself"
        )
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", path=f"/{database}"))


async def _ensure_database(url: str, database: str) -> None:
    from mailpipe.db import Database, admin_execute, with_database_name

    async with Database(url, min_size=1, max_size=1) as db:
        exists = await db.fetch_value("SELECT 1 FROM pg_database WHERE datname = %s", [database])
    if not exists:
        await asyncio.to_thread(admin_execute, url, [f'CREATE DATABASE "{database}"'])
    target = with_database_name(url, database)
    await asyncio.to_thread(admin_execute, target, ["CREATE EXTENSION IF NOT EXISTS pg_trgm"])


def prefect_database_url(
    choice: PrefectDatabase = PrefectDatabase.AUTO, settings: Settings | None = None
) -> str | None:
    """The connection URL for ``up``'s Prefect server (the database created when missing), or
    None for Prefect's own choice (SQLite, or ``PREFECT_SERVER_DATABASE_CONNECTION_URL``)."""
    from mailpipe.db import database_url

    settings = settings or get_settings()
    if os.environ.get(CONNECTION_URL_VARIABLE) or choice is PrefectDatabase.SQLITE:
        return None
    uses_embedded = settings.database_url is None and not settings.database_url_block
    if choice is PrefectDatabase.AUTO and not uses_embedded:
        return None
    url = database_url(settings)
    asyncio.run(_ensure_database(url, PREFECT_DATABASE))
    return asyncpg_url(url, PREFECT_DATABASE)
