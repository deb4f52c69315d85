"""Small builders for test data, written through the same SQL the app uses."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

from mailpipe import quality_worker
from mailpipe.db import Database, Jsonb
from mailpipe.templates import save_template
from mailpipe.testing.smtpd import SMTPTestServer


async def add_provider(
    db: Database,
    name: str,
    server: SMTPTestServer | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    priority: int = 10,
    tls_mode: str = "none",
    from_address: str = "Shop <shop@example.com>",
    timeout_seconds: float = 5,
    max_connections: int = 2,
    **columns: Any,
) -> None:
    """Insert a provider pointing at an in-process server (or at host/port)."""
    values = {
        "provider_name": name,
        "host": host,
        "port": port if port is not None else (server.port if server else 25),
        "priority": priority,
        "tls_mode": tls_mode,
        "from_address": from_address,
        "timeout_seconds": timeout_seconds,
        "max_connections": max_connections,
        **columns,
    }
    if "credentials" in values and values["credentials"] is not None:
        values["credentials"] = Jsonb(values["credentials"])
    names = ", ".join(values)
    placeholders = ", ".join(f"%({k})s" for k in values)
    await db.execute(f"INSERT INTO smtp_provider_configs ({names}) VALUES ({placeholders})", values)


async def add_template(
    db: Database,
    key: str = "welcome",
    *,
    subject: str = "Welcome {{ name }}",
    text_body: str = "Hello {{ name }}, welcome.\n",
    html_body: str | None = "<p>Hello {{ name }}</p>",
    from_address: str | None = None,
) -> int:
    return await save_template(
        db,
        key,
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        from_address=from_address,
    )


async def insert_events(
    db: Database,
    count: int,
    *,
    template: str = "welcome",
    priority: int = 5,
    domain: str = "example.com",
    scheduled_at: dt.datetime | None = None,
    payload: dict[str, Any] | None = None,
    prefix: str = "user",
) -> list[int]:
    """Insert ``count`` queued events with plain SQL, as the application does."""
    rows = await db.fetch_all(
        "INSERT INTO communication_events (event_type, recipient_email, template_key, priority,"
        " scheduled_at, payload)"
        " SELECT 'welcome', %(prefix)s || g || '@' || %(domain)s, %(template)s, %(priority)s,"
        "        coalesce(%(at)s, now()), %(payload)s"
        "   FROM generate_series(1, %(count)s) g RETURNING id",
        {
            "prefix": prefix,
            "domain": domain,
            "template": template,
            "priority": priority,
            "at": scheduled_at,
            "payload": Jsonb(payload if payload is not None else {"name": "Ann"}),
            "count": count,
        },
    )
    return [r["id"] for r in rows]


async def statuses(db: Database) -> dict[str, int]:
    rows = await db.fetch_all(
        "SELECT status, count(*) AS n FROM communication_events GROUP BY status"
    )
    return {r["status"]: r["n"] for r in rows}


async def allow_invalid_priorities(db: Database) -> None:
    """Let rows hold a priority outside 0-9, as rows written before migration 0008 (its CHECK
    and trigger refuse them now): what the suite's priority_in_range still guards against."""
    await db.execute(
        "ALTER TABLE communication_events DROP CONSTRAINT communication_events_priority_check"
    )
    await db.execute(
        "ALTER TABLE communication_events DISABLE TRIGGER validate_communication_event"
    )


async def plant_quality_violations(db: Database) -> None:
    """Two queued events, one with priority 42 (breaks communication_events, policy fail), and
    a rate-limit counter over its limit (breaks rate_limit_counters, policy warn)."""
    await add_template(db)
    await insert_events(db, 2)
    await allow_invalid_priorities(db)
    await db.execute(
        "UPDATE communication_events SET priority = 42"
        " WHERE id = (SELECT min(id) FROM communication_events)"
    )
    await db.execute(
        "INSERT INTO rate_limit_counters (scope, key, window_size, window_start,"
        " count, limit_value) VALUES ('provider', 'p', 'minute',"
        " date_trunc('minute', now()), 500, 100)"
    )


# ---------------------------------------------------------------- Prefect artifacts (API reads)


async def run_artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The artifacts one flow run published, by key (Prefect imported here, not at import)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in artifacts}


async def latest_table_artifact(key: str) -> list[dict[str, Any]]:
    """The rows of the newest table artifact with this key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key!r}"
    return table_rows(max(found, key=lambda a: a.created))


def table_rows(artifact: Any) -> list[dict[str, Any]]:
    """A table artifact's rows (the API returns them as JSON text)."""
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def take_events(worker: Any, prefix: str) -> list[Any]:
    """The events with this name prefix the ``prefect_events`` fixture captured so far, which
    it then forgets (the next call sees only newer ones)."""
    worker.wait_until_empty()  # not drain(): that would stop the worker for the next run
    events = [e for e in worker._client.events if e.event.startswith(prefix)]
    worker._client.events = []
    return events


# ---------------------------------------------------------------- a check worker in the test


class Worker(asyncio.Event):
    """Set whenever the worker holds its liveness lock (again, after a reconnection)."""

    task: asyncio.Task[int]  # its result: how many checks it answered


@contextlib.asynccontextmanager
async def worker(database_url: str) -> AsyncIterator[Worker]:
    """A real ``mailpipe check worker`` as a task of the test's event loop; yields once it
    holds its liveness lock, stops it (its current check finishes) on exit."""
    stop, ready = asyncio.Event(), Worker()
    task = asyncio.create_task(
        quality_worker.run_worker(
            stop=stop, ready=ready, database_url=database_url, poll_seconds=0.5
        )
    )
    await asyncio.wait(
        [task, asyncio.create_task(ready.wait())], timeout=120, return_when=asyncio.FIRST_COMPLETED
    )
    assert ready.is_set(), task.exception() if task.done() else "worker not ready in 120 s"
    ready.task = task
    try:
        yield ready
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
