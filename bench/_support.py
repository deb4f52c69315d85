"""What the benchmarks share: the Postgres server they run on, and a fresh migrated database.

Imported by the bench scripts as ``_support`` (a script's own folder is on ``sys.path``); they
put the repository root on ``sys.path`` first, for ``mailpipe``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailpipe.db import Database, admin_execute, with_database_name
from mailpipe.migrations import migrate


@contextmanager
def embedded_postgres(data_dir: Path, *, cleanup_mode: str = "stop") -> Iterator[str]:
    """An embedded Postgres with its data in ``data_dir``: its admin URL, and the server cleaned
    up (``cleanup_mode``: "stop" or "delete") at the end."""
    from mailpipe.embedded import get_server

    server = get_server(data_dir, cleanup_mode=cleanup_mode)
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextmanager
def postgres_server(
    url: str | None, data_dir: Path, *, cleanup_mode: str = "stop"
) -> Iterator[str]:
    """The admin URL of the server to run on: ``url`` when given (left as it is at the end),
    else an :func:`embedded_postgres` in ``data_dir``."""
    if url:
        yield url
        return
    with embedded_postgres(data_dir, cleanup_mode=cleanup_mode) as admin:
        yield admin


def create_database(admin: str, name: str) -> str:
    """(Re)create database ``name`` on the server at ``admin``, migrated; returns its URL."""
    admin_execute(
        admin, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"]
    )
    url = with_database_name(admin, name)

    async def go() -> None:
        async with Database(url, min_size=1, max_size=1) as db:
            await migrate(db)

    asyncio.run(go())
    return url
