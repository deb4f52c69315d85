"""Database faults: the drainers' Postgres connections are killed mid-run
(``pg_terminate_backend``, what a restart, failover or idle-killer does to a worker).

Promise: the run stops with a mailpipe error that says what happened (DatabaseUnavailable,
no raw driver exception), the next run (after the lease expiry) resumes and delivers
everything, 0 lost; the only duplicates are messages that were accepted by the server while
their batch's outcome could not be recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from mailpipe.db import Database
from mailpipe.delivery import drain_in_processes, drain_queue
from mailpipe.errors import DatabaseUnavailable, MailpipeError
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer
from tests.factories import add_provider, add_template, insert_events
from tests.reliability.support import (
    Figures,
    events,
    expire_leases,
    reconcile,
    recorded_message_ids,
    wait_for,
)

COUNT = 400


async def terminate_drainers(db: Database) -> int:
    """Kill every engine connection to this database (application_name 'mailpipe')."""
    return len(await db.fetch_all(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'mailpipe'"
        "   AND pid <> pg_backend_pid()"))


async def sent(db: Database) -> int:
    return await db.fetch_value(
        "SELECT count(*) FROM communication_events WHERE status = 'sent'")


def assert_clear(error: BaseException) -> None:
    """A mailpipe error saying the connection was lost, not a driver exception."""
    assert isinstance(error, DatabaseUnavailable), repr(error)
    assert type(error).__module__ == "mailpipe.errors"
    text = str(error)
    assert text.startswith("lost the connection to Postgres"), text
    assert "terminating connection due to administrator command" in text, text
    assert "\n" not in text and len(text) < 500, text


async def resume_and_reconcile(db: Database, server: SMTPTestServer, ids: list[int],
                               in_flight: set[str]) -> dict:
    await expire_leases(db)  # the lease of the failed run's batch runs out
    server.behaviour.data_delay = 0
    result = await drain_queue(db, batch_size=20)
    ledger = reconcile(await events(db), [server], expected_ids=ids)
    assert ledger.statuses == {"sent": len(ids)}, ledger.statuses
    assert ledger.lost == [] and ledger.unrecorded == []
    assert set(ledger.duplicated_ids) <= in_flight
    return {"rescued": result.rescued, **ledger.figures()}


@pytest.fixture
async def queue(db: Database, smtpd_factory: Callable[..., SMTPTestServer]
                ) -> tuple[SMTPTestServer, list[int]]:
    server = smtpd_factory(Behaviour(data_delay=0.01))
    await add_provider(db, "primary", server, max_connections=2)
    await add_template(db)
    return server, await insert_events(db, COUNT)


async def test_connections_killed_mid_run_in_process(
    db: Database, database_url: str, queue: tuple[SMTPTestServer, list[int]],
    figures: Figures,
) -> None:
    server, ids = queue
    async with Database(database_url, min_size=2, max_size=4) as engine_db:
        run = asyncio.create_task(drain_queue(engine_db, batch_size=20, concurrency=2))
        await wait_for(lambda: sent(db), timeout=60, what="the first batches are recorded")
        await wait_for(lambda: len(server.accepted) >= 60, timeout=60,
                       what="the run is well under way")
        killed = await terminate_drainers(db)
        with pytest.raises(MailpipeError) as info:
            await run
    assert_clear(info.value)
    recorded = await recorded_message_ids(db)
    in_flight = set(server.accepted_message_ids()) - recorded
    assert len(recorded) < COUNT
    numbers = await resume_and_reconcile(db, server, ids, in_flight)
    figures.record("database_faults", "pg_terminate_backend mid-run (drain_queue, 2 drainers)",
                   connections_killed=killed, in_flight=len(in_flight),
                   error=type(info.value).__name__, **numbers)


async def test_connections_killed_mid_run_in_processes(
    db: Database, database_url: str, queue: tuple[SMTPTestServer, list[int]],
    figures: Figures,
) -> None:
    server, ids = queue
    run = asyncio.create_task(asyncio.to_thread(
        drain_in_processes, database_url, processes=2, batch_size=20, concurrency=1))
    await wait_for(lambda: len(server.accepted) >= 60, timeout=60,
                   what="both processes are sending")
    killed = await terminate_drainers(db)
    with pytest.raises(MailpipeError) as info:
        await run
    assert_clear(info.value)
    in_flight = set(server.accepted_message_ids()) - await recorded_message_ids(db)
    numbers = await resume_and_reconcile(db, server, ids, in_flight)
    figures.record("database_faults", "pg_terminate_backend mid-run (2 drainer processes)",
                   connections_killed=killed, in_flight=len(in_flight),
                   error=type(info.value).__name__, **numbers)


async def test_one_lost_connection_stops_the_run_after_the_others_record_their_batch(
    db: Database, database_url: str, queue: tuple[SMTPTestServer, list[int]],
    figures: Figures, caplog: pytest.LogCaptureFixture,
) -> None:
    server, ids = queue
    async with Database(database_url, min_size=2, max_size=2) as engine_db:
        run = asyncio.create_task(drain_queue(engine_db, batch_size=20, concurrency=2))
        await wait_for(lambda: len(server.accepted) >= 60, timeout=60,
                       what="the run is well under way")
        victim = await db.fetch_value(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'mailpipe'"
            " ORDER BY backend_start LIMIT 1")
        assert victim
        with pytest.raises(MailpipeError) as info:
            await run
    assert_clear(info.value)
    # Only the failed drainer's batch is left leased: the healthy one recorded its batch
    # before stopping, so its messages are not sent twice.
    assert await db.fetch_value(
        "SELECT count(*) FROM communication_events WHERE status = 'processing'") <= 20
    in_flight = set(server.accepted_message_ids()) - await recorded_message_ids(db)
    assert len(in_flight) <= 20
    assert "never retrieved" not in caplog.text
    numbers = await resume_and_reconcile(db, server, ids, in_flight)
    figures.record("database_faults", "one of 2 connections killed mid-run",
                   connections_killed=1, in_flight=len(in_flight),
                   error=type(info.value).__name__, **numbers)
