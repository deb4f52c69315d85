"""Supabase's transaction pooler (port 6543): no prepared statements, and the parts that need
one session (LISTEN, advisory locks) say so instead of failing obscurely.

There is no pooler here: a URL on port 6543 is enough for what mailpipe decides from the URL,
and a local TCP relay on that port (one backend per client connection) lets the statements
that do work run for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from mailpipe.adoption.adopt import adopt
from mailpipe.db import Database, SessionRequired, url_host_port
from mailpipe.migrations import migrate
from mailpipe.quality_worker import run_worker
from tests.cli_support import invoke


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As asyncio's server does: a previous test's closed connections may linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.asynccontextmanager
async def relay_on_6543(target_url: str) -> AsyncIterator[str]:
    """A relay from TCP 127.0.0.1:6543 to the test Postgres (TCP, or the embedded server's
    Unix socket); yields a URL for the same database through the relay."""
    if not _port_free(6543):
        pytest.skip("port 6543 is taken on this machine: the relay cannot listen there")
    parts = urlsplit(target_url)
    host, port = url_host_port(target_url)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if host and host.startswith("/"):
            return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host or "127.0.0.1", port)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await connect()
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", 6543)
    user = f"{parts.username}@" if parts.username else ""
    try:
        yield f"postgresql://{user}127.0.0.1:6543{parts.path}"
    finally:
        server.close()
        await server.wait_closed()


async def test_queries_run_without_prepared_statements(database_url: str) -> None:
    async with relay_on_6543(database_url) as url, Database(url, min_size=1, max_size=1) as db:
        assert db.transaction_pooler
        for _ in range(8):  # past psycopg's prepare_threshold (5)
            assert await db.fetch_value("SELECT count(*) FROM communication_events") == 0
        prepared = await db.fetch_value("SELECT count(*) FROM pg_prepared_statements")
    assert prepared == 0


async def test_session_parts_say_what_they_need(database_url: str) -> None:
    async with relay_on_6543(database_url) as url, Database(url, min_size=1, max_size=1) as db:
        with pytest.raises(SessionRequired, match="session pooler .*port 5432"):
            await migrate(db)
        with pytest.raises(SessionRequired, match="mailpipe db adopt"):
            await adopt(db)
        with pytest.raises(SessionRequired, match="LISTEN"):
            async with db.listen("mailpipe_quality_checks"):
                pass
        with pytest.raises(SessionRequired, match="LISTEN"):
            await run_worker(database_url=url, max_checks=1)


async def test_cli_migrate_through_the_transaction_pooler_is_one_clear_line(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailpipe.config import get_settings

    async with relay_on_6543(database_url) as url:
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        try:
            result = await asyncio.to_thread(invoke, "db", "migrate")
        finally:
            get_settings.cache_clear()
    assert result.exit_code == 1
    assert "session pooler" in result.output
    assert len(result.output.strip().splitlines()) == 1
