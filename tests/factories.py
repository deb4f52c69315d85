"""Small builders for test data, written through the same SQL the app uses."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mailpipe.db import Database, Jsonb
from mailpipe.templates import save_template
from mailpipe.testing.smtpd import SMTPTestServer


async def add_provider(db: Database, name: str, server: SMTPTestServer | None = None, *,
                       host: str = "127.0.0.1", port: int | None = None, priority: int = 10,
                       tls_mode: str = "none", from_address: str = "Shop <shop@example.com>",
                       timeout_seconds: float = 5, max_connections: int = 2,
                       **columns: Any) -> None:
    """Insert a provider pointing at an in-process server (or at host/port)."""
    values = {
        "provider_name": name, "host": host,
        "port": port if port is not None else (server.port if server else 25),
        "priority": priority, "tls_mode": tls_mode, "from_address": from_address,
        "timeout_seconds": timeout_seconds, "max_connections": max_connections, **columns,
    }
    if "credentials" in values and values["credentials"] is not None:
        values["credentials"] = Jsonb(values["credentials"])
    names = ", ".join(values)
    placeholders = ", ".join(f"%({k})s" for k in values)
    await db.execute(f"INSERT INTO smtp_provider_configs ({names}) VALUES ({placeholders})",
                     values)


async def add_template(db: Database, key: str = "welcome", *,
                       subject: str = "Welcome {{ name }}",
                       text_body: str = "Hello {{ name }}, welcome.\n",
                       html_body: str | None = "<p>Hello {{ name }}</p>",
                       from_address: str | None = None) -> int:
    return await save_template(db, key, subject=subject, text_body=text_body,
                               html_body=html_body, from_address=from_address)


async def insert_events(db: Database, count: int, *, template: str = "welcome",
                        priority: int = 5, domain: str = "example.com",
                        scheduled_at: dt.datetime | None = None,
                        payload: dict[str, Any] | None = None, prefix: str = "user") -> list[int]:
    """Insert ``count`` queued events with plain SQL, as the application does."""
    rows = await db.fetch_all(
        "INSERT INTO communication_events (event_type, recipient_email, template_key, priority,"
        " scheduled_at, payload)"
        " SELECT 'welcome', %(prefix)s || g || '@' || %(domain)s, %(template)s, %(priority)s,"
        "        coalesce(%(at)s, now()), %(payload)s"
        "   FROM generate_series(1, %(count)s) g RETURNING id",
        {"prefix": prefix, "domain": domain, "template": template, "priority": priority,
         "at": scheduled_at, "payload": Jsonb(payload if payload is not None else {"name": "Ann"}),
         "count": count})
    return [r["id"] for r in rows]


async def statuses(db: Database) -> dict[str, int]:
    rows = await db.fetch_all(
        "SELECT status, count(*) AS n FROM communication_events GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def plant_quality_violations(db: Database) -> None:
    """Two queued events, one with priority 42 (breaks communication_events, policy fail), and
    a rate-limit counter over its limit (breaks rate_limit_counters, policy warn)."""
    await add_template(db)
    await insert_events(db, 2)
    await db.execute("UPDATE communication_events SET priority = 42"
                     " WHERE id = (SELECT min(id) FROM communication_events)")
    await db.execute("INSERT INTO rate_limit_counters (scope, key, window_size, window_start,"
                     " count, limit_value) VALUES ('provider', 'p', 'minute',"
                     " date_trunc('minute', now()), 500, 100)")
