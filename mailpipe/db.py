"""The database layer: the only module that imports psycopg.

It owns the connection pool, runs named queries, and turns driver errors into mailpipe's own
exceptions so that no other module needs to know which driver is underneath. One mode: async.
(The CLI and flows call it through ``asyncio.run`` or their own event loop.)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from mailpipe.config import Settings, get_settings
from mailpipe.errors import (
    DatabaseConflict,
    DatabaseError,
    DatabaseUnavailable,
    IntegrityViolation,
)
from mailpipe.redaction import redact_url

Row = dict[str, Any]

__all__ = [
    "TRANSACTION_POOLER_PORT",
    "Database",
    "Jsonb",
    "Listener",
    "Row",
    "SessionRequired",
    "Transaction",
    "database_url",
    "redact_url",
    "url_host_port",
]

TRANSACTION_POOLER_PORT = 6543
"""Supabase's transaction pooler (Supavisor in transaction mode): one backend per transaction."""


class SessionRequired(DatabaseError):
    """An operation that needs one database session was asked for through a transaction
    pooler (which hands each transaction to any backend)."""


def url_host_port(url: str) -> tuple[str | None, int | None]:
    """Host and port of a URL or a ``key=value`` conninfo string (5432 when omitted)."""
    if "://" in url:
        parts = urlsplit(url)
        # libpq lets ?host=...&port=... override (or give) the authority part.
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            port = int(params["port"]) if "port" in params else parts.port
        except ValueError:
            port = None
        return params.get("host", parts.hostname), port or 5432
    settings = dict(re.findall(r"(\w+)\s*=\s*'?([^'\s]*)'?", url))
    port_text = settings.get("port", "5432")
    return settings.get("host"), int(port_text) if port_text.isdigit() else None


def require_session(url: str, what: str) -> None:
    """Raise :class:`SessionRequired` when ``url`` goes through a transaction pooler."""
    if through_transaction_pooler(url):
        raise SessionRequired(
            f"{what} needs one database session for its whole length (LISTEN or an advisory "
            f"lock), which a transaction pooler (port {TRANSACTION_POOLER_PORT}) cannot keep: "
            "point DATABASE_URL at the session pooler (port 5432 on the pooler host) or at the "
            "direct connection for this command"
        )


def through_transaction_pooler(url: str) -> bool:
    """Whether ``url`` goes through Supabase's transaction pooler (port 6543)."""
    return url_host_port(url)[1] == TRANSACTION_POOLER_PORT


def database_url(settings: Settings | None = None) -> str:
    """The Postgres URL to use: ``DATABASE_URL`` when set, else the Prefect Secret block named
    by ``MAILPIPE_DATABASE_URL_BLOCK`` (deployed runs), else the embedded server's."""
    settings = settings or get_settings()
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    if settings.database_url_block:
        from mailpipe.runtime import read_secret_block  # imports Prefect, only here

        return read_secret_block(settings.database_url_block, purpose="MAILPIPE_DATABASE_URL_BLOCK")
    from mailpipe.embedded import ensure_embedded_postgres

    return ensure_embedded_postgres(settings.pgdata)


CHECKS_SEARCH_PATH = 'mailpipe_checks, "$user", public'
"""The data-quality suites' search_path: on an adopted app database the schema mailpipe_checks
holds views that read the app's columns as mailpipe's (``mailpipe db adopt``); elsewhere it does
not exist and the usual path applies."""


def sqlalchemy_url(url: str, *, search_path: str | None = None) -> str:
    """The same URL for SQLAlchemy with the psycopg 3 dialect (used by Great Expectations);
    ``search_path`` is set for its sessions when given (libpq ``options``)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise DatabaseError(f"not a Postgres URL: {redact_url(url)}")
    converted = f"postgresql+psycopg://{rest}"
    if search_path is None:
        return converted
    parts = urlsplit(converted)
    params = parse_qs(parts.query, keep_blank_values=True)
    option = "-c search_path=" + search_path.replace(" ", "")  # no space inside one option
    params["options"] = [" ".join(filter(None, [*params.get("options", []), option]))]
    query_text = "&".join(f"{k}={quote(v, safe='')}" for k, vs in params.items() for v in vs)
    return urlunsplit(parts._replace(query=query_text))


@contextlib.contextmanager
def _translated_errors(url: str | None = None) -> Iterator[None]:
    """Re-raise psycopg errors as mailpipe errors, never showing a password."""
    try:
        yield
    except pg_errors.IntegrityError as exc:
        raise IntegrityViolation(_message(exc), constraint_name=exc.diag.constraint_name) from exc
    except (pg_errors.TransactionRollback, pg_errors.DeadlockDetected) as exc:
        # OperationalErrors to psycopg, but the server is fine: another transaction
        # conflicted (40P01 deadlock, 40001 serialization). Transient: a retry succeeds.
        raise DatabaseConflict(
            f"{_message(exc)}: a concurrent transaction conflicted and Postgres rolled this "
            "one back; it is safe to run again (retried automatically where mailpipe can)"
        ) from exc
    except (psycopg.OperationalError, PoolTimeout) as exc:
        where = f" at {redact_url(url)}" if url else ""
        # One line: libpq's messages span several ("...unexpectedly\n\tThis probably means").
        text = " ".join(redact_url(str(exc)).split()) or type(exc).__name__
        if _connection_lost(exc):
            raise DatabaseUnavailable(
                f"lost the connection to Postgres{where}: {text}. Run again once the server "
                "is back (check that it runs)."
            ) from exc
        raise DatabaseUnavailable(
            f"Postgres is unreachable{where}: {text}. Check DATABASE_URL and that the server runs."
        ) from exc
    except pg_errors.UndefinedTable as exc:
        # Almost always a database behind the code (a new table in a newer migration).
        raise DatabaseError(
            f"{_message(exc)}: the database is not migrated to this version of mailpipe; "
            "run `mailpipe db migrate`"
        ) from exc
    except psycopg.Error as exc:
        raise DatabaseError(_message(exc)) from exc


_LOST = (
    pg_errors.AdminShutdown,
    pg_errors.CrashShutdown,
    pg_errors.IdleSessionTimeout,
    pg_errors.IdleInTransactionSessionTimeout,
)


def _connection_lost(exc: Exception) -> bool:
    """A connection that worked was cut (terminated, server restart), as opposed to one that
    could not be opened."""
    text = str(exc)
    return (
        isinstance(exc, _LOST)
        or "server closed the connection" in text
        or "connection is closed" in text
        or "consuming input failed" in text
    )


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    return text


class Transaction:
    """Queries on one connection inside one transaction (or in autocommit outside of one)."""

    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> int:
        """Run a statement; returns the affected row count."""
        with _translated_errors():
            cur = await self._conn.execute(sql, params)
            return cur.rowcount

    async def fetch_all(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> list[Row]:
        """Run a query and return every row as a dict."""
        with _translated_errors():
            cur = await self._conn.execute(sql, params)
            return await cur.fetchall()

    async def fetch_one(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Row | None:
        """Run a query and return its first row, or None."""
        with _translated_errors():
            cur = await self._conn.execute(sql, params)
            return await cur.fetchone()

    async def fetch_value(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Any:
        """Run a query and return the first column of its first row (None when no row)."""
        row = await self.fetch_one(sql, params)
        return None if row is None else next(iter(row.values()))

    async def execute_many(
        self, sql: str, params_seq: Iterable[Sequence[Any] | dict[str, Any]]
    ) -> None:
        """Run one statement for many parameter sets in a single pipelined round trip."""
        with _translated_errors():
            async with self._conn.cursor() as cur:
                await cur.executemany(sql, params_seq)


class Listener(Transaction):
    """A dedicated session (not pooled) that LISTENs on channels and runs queries.

    Session state lives as long as it does: advisory locks taken on it are released when it
    closes or its process dies, which makes it a liveness signal other sessions can see.
    """

    async def wait(self, timeout: float) -> list[str]:
        """Payloads of the notifications that arrive within ``timeout`` seconds (returns at
        the first one; empty on timeout)."""
        with _translated_errors():
            return [n.payload async for n in self._conn.notifies(timeout=timeout, stop_after=1)]


class Database:
    """A pool of connections to one Postgres database.

    Use as ``async with Database(url) as db:``; then ``db.fetch_all(...)`` for single
    statements (autocommit) or ``async with db.transaction() as tx:`` to group them.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        settings: Settings | None = None,
        application_name: str = "mailpipe",
    ) -> None:
        settings = settings or get_settings()
        self.url = url or database_url(settings)
        self._timeout = settings.connect_timeout
        # A transaction pooler may run each statement on another backend, where a statement
        # prepared on the first does not exist: no server-side prepared statements then.
        self.transaction_pooler = through_transaction_pooler(self.url)
        self._connect_kwargs: dict[str, Any] = (
            {"prepare_threshold": None} if self.transaction_pooler else {}
        )
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=min_size or settings.pool_min_size,
            max_size=max(max_size or settings.pool_max_size, min_size or settings.pool_min_size),
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "application_name": application_name,
                "connect_timeout": int(settings.connect_timeout),
                **self._connect_kwargs,
            },
            timeout=settings.connect_timeout,
            open=False,
            name="mailpipe",
        )

    def require_session(self, what: str) -> None:
        """Raise :class:`SessionRequired` when connected through a transaction pooler: ``what``
        (LISTEN, an advisory lock) needs one session for its whole length."""
        require_session(self.url, what)

    async def open(self) -> Database:
        """Open the pool and check one connection works (clear error when it does not)."""
        with _translated_errors(self.url):
            await self._pool.open(wait=True, timeout=self._timeout)
        return self

    async def close(self) -> None:
        """Close every connection."""
        await self._pool.close()

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Transaction]:
        """One pooled connection in autocommit mode (each statement commits)."""
        with _translated_errors(self.url):
            async with self._pool.connection() as conn:
                yield Transaction(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One pooled connection inside a transaction: commits on exit, rolls back on error."""
        with _translated_errors(self.url):
            async with self._pool.connection() as conn, conn.transaction():
                yield Transaction(conn)

    @contextlib.asynccontextmanager
    async def listen(
        self, *channels: str, application_name: str | None = None
    ) -> AsyncIterator[Listener]:
        """A dedicated autocommit session listening on ``channels`` (identifiers from our
        code), closed on exit. Refused through a transaction pooler (:meth:`require_session`)."""
        self.require_session("LISTEN " + ", ".join(channels) if channels else "a dedicated session")
        with _translated_errors(self.url):
            conn = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                row_factory=dict_row,
                application_name=application_name or "mailpipe",
                connect_timeout=int(self._timeout),
                **self._connect_kwargs,
            )
        try:
            for channel in channels:
                with _translated_errors(self.url):
                    await conn.execute(f"LISTEN {channel}")
            yield Listener(conn)
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> int:
        """Run one statement in autocommit; returns the affected row count."""
        async with self.connection() as tx:
            return await tx.execute(sql, params)

    async def fetch_all(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> list[Row]:
        """Run one query in autocommit and return every row."""
        async with self.connection() as tx:
            return await tx.fetch_all(sql, params)

    async def fetch_one(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Row | None:
        """Run one query in autocommit and return its first row, or None."""
        async with self.connection() as tx:
            return await tx.fetch_one(sql, params)

    async def fetch_value(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Any:
        """Run one query in autocommit and return the first column of its first row."""
        async with self.connection() as tx:
            return await tx.fetch_value(sql, params)


def admin_execute(url: str, statements: Sequence[str]) -> None:
    """Run statements that cannot run in a transaction (CREATE/DROP DATABASE), synchronously.

    For test fixtures and setup commands; everything else goes through :class:`Database`.
    """
    with _translated_errors(url), psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def with_database_name(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    if "://" in url:
        return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))
    conninfo = psycopg.conninfo.conninfo_to_dict(url)
    conninfo["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**conninfo)
