"""What the target looks like: each table's shape, the whole database's, and how we reach it.

A table's shape comes from its columns (who made it: the app, the seed's hardening or
mailpipe); the database's from its tables'; the connection mode from backend pids and ports.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailpipe.adoption.preflight.model import (
    TABLES,
    ConnectionMode,
    DatabaseShape,
    Shape,
    TableReport,
)
from mailpipe.db import url_host_port


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
