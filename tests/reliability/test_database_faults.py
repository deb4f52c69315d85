"""Database faults: the drainers' Postgres connections are killed mid-run
(``pg_terminate_backend``, what a restart, failover or idle-killer does to a worker).

Promise: the run stops with a mailpipe error that says what happened (DatabaseUnavailable,
no raw driver exception), the next run (after the lease expiry) resumes and delivers
everything, 0 lost; the duplicates are exactly the messages that were accepted by the server
while their batch's outcome could not be recorded, each sent once more and flagged. (What was
in flight is read once the failed run has returned: by then each of its statements has its
answer or its connection is gone, so each of its transactions is committed or rolled back.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from mailpipe.db import Database
from mailpipe.delivery import drain_in_processes, drain_queue, drain_run
from mailpipe.errors import DatabaseUnavailable, MailpipeError
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer
from tests.factories import add_provider, add_template, insert_events
from tests.reliability.support import (
    ENGINE,
    Figures,
    expire_leases,
    recorded_message_ids,
    recover_and_reconcile,
    wait_for,
)

COUNT = 400
BATCH = 20


async def terminate_drainers(db: Database, limit: int | None = None) -> int:
    """Kill the engine's connections to this database (application_name 'mailpipe'): every
    one, or the ``limit`` oldest. Returns how many were terminated."""
    return await db.fetch_value(
        "SELECT count(*) FILTER (WHERE terminated) FROM ("
        "  SELECT pg_terminate_backend(pid) AS terminated FROM pg_stat_activity"
        "   WHERE datname = current_database() AND application_name = %s"
        "     AND pid <> pg_backend_pid()"
        "   ORDER BY backend_start LIMIT %s) AS victims",
        (ENGINE, limit),
    )


def assert_clear(error: BaseException) -> None:
    """A mailpipe error saying the connection was lost, not a driver exception."""
    assert isinstance(error, DatabaseUnavailable), repr(error)
    assert type(error).__module__ == "mailpipe.errors"
    text = str(error)
    assert text.startswith("lost the connection to Postgres"), text
    # libpq reports the server's FATAL message, or, when the socket closed before it read
    # that message (a race on a loaded machine), that the server closed the connection.
    assert (
        "terminating connection due to administrator command" in text
        or "server closed the connection unexpectedly" in text
    ), text
    assert "\n" not in text and len(text) < 500, text


@pytest.fixture
async def queue(
    db: Database, smtpd_factory: Callable[..., SMTPTestServer]
) -> tuple[SMTPTestServer, list[int]]:
    server = smtpd_factory(Behaviour(data_delay=0.01))
    await add_provider(db, "primary", server, max_connections=2)
    await add_template(db)
    return server, await insert_events(db, COUNT)


async def test_connections_killed_mid_run_in_process(
    db: Database,
    database_url: str,
    queue: tuple[SMTPTestServer, list[int]],
    figures: Figures,
) -> None:
    server, ids = queue
    async with Database(database_url, min_size=2, max_size=4) as engine_db:
        run = asyncio.create_task(drain_queue(engine_db, batch_size=BATCH, concurrency=2))
        await wait_for(
            lambda: recorded_message_ids(db), timeout=60, what="the first batches are recorded"
        )
        await wait_for(
            lambda: len(server.accepted) >= 60, timeout=60, what="the run is well under way"
        )
        killed = await terminate_drainers(db)
        with pytest.raises(MailpipeError) as info:
            await run
    assert_clear(info.value)
    recorded = await recorded_message_ids(db)
    in_flight = set(server.accepted_message_ids()) - recorded
    assert len(recorded) < COUNT
    numbers = await recover_and_reconcile(db, server, ids, in_flight, batch_size=BATCH)
    figures.record(
        "database_faults",
        "pg_terminate_backend mid-run (drain_queue, 2 drainers)",
        connections_killed=killed,
        in_flight=len(in_flight),
        error=type(info.value).__name__,
        **numbers,
    )


async def test_connections_killed_mid_run_in_processes(
    db: Database,
    database_url: str,
    queue: tuple[SMTPTestServer, list[int]],
    figures: Figures,
) -> None:
    server, ids = queue
    run = asyncio.create_task(
        asyncio.to_thread(
            drain_in_processes, database_url, processes=2, batch_size=BATCH, concurrency=1
        )
    )
    await wait_for(
        lambda: len(server.accepted) >= 60, timeout=60, what="both processes are sending"
    )
    killed = await terminate_drainers(db)
    with pytest.raises(MailpipeError) as info:
        await run
    assert_clear(info.value)
    in_flight = set(server.accepted_message_ids()) - await recorded_message_ids(db)
    numbers = await recover_and_reconcile(db, server, ids, in_flight, batch_size=BATCH)
    figures.record(
        "database_faults",
        "pg_terminate_backend mid-run (2 drainer processes)",
        connections_killed=killed,
        in_flight=len(in_flight),
        error=type(info.value).__name__,
        **numbers,
    )


async def test_one_lost_connection_stops_the_run_after_the_others_record_their_batch(
    db: Database,
    database_url: str,
    queue: tuple[SMTPTestServer, list[int]],
    figures: Figures,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, ids = queue
    async with Database(database_url, min_size=2, max_size=2) as engine_db:
        run = asyncio.create_task(drain_queue(engine_db, batch_size=BATCH, concurrency=2))
        await wait_for(
            lambda: len(server.accepted) >= 60, timeout=60, what="the run is well under way"
        )
        assert await terminate_drainers(db, limit=1) == 1
        with pytest.raises(MailpipeError) as info:
            await run
    assert_clear(info.value)
    # Only the failed drainer's batch is left leased: the healthy one recorded its batch
    # before stopping, so its messages are not sent twice.
    assert (
        await db.fetch_value(
            "SELECT count(*) FROM communication_events WHERE status = 'processing'"
        )
        <= BATCH
    )
    in_flight = set(server.accepted_message_ids()) - await recorded_message_ids(db)
    assert len(in_flight) <= BATCH
    assert "never retrieved" not in caplog.text
    numbers = await recover_and_reconcile(db, server, ids, in_flight, batch_size=BATCH)
    figures.record(
        "database_faults",
        "one of 2 connections killed mid-run",
        connections_killed=1,
        in_flight=len(in_flight),
        error=type(info.value).__name__,
        **numbers,
    )


async def test_a_retried_run_counts_every_attempt(
    db: Database,
    database_url: str,
    queue: tuple[SMTPTestServer, list[int]],
) -> None:
    """process_email_queue's task is retried by Prefect after a lost connection: the run's
    summary counts what the failed attempt recorded plus what the retry did (before, only the
    retry: ``sent=2200`` while 2,600 were recorded)."""
    key = f"flow-run-{uuid.uuid4()}"
    first = asyncio.create_task(drain_run(key, url=database_url, batch_size=BATCH, concurrency=2))
    await wait_for(
        lambda: recorded_message_ids(db), timeout=60, what="the first batches are recorded"
    )
    await terminate_drainers(db)
    with pytest.raises(MailpipeError) as info:
        await first
    assert_clear(info.value)
    recorded_before_retry = len(await recorded_message_ids(db))
    assert 0 < recorded_before_retry < COUNT
    leased = await db.fetch_value(
        "SELECT count(*) FROM communication_events WHERE status = 'processing'"
    )
    # The retry (the leases of the failed attempt run out meanwhile, as in a later run).
    await expire_leases(db)
    result = await drain_run(key, url=database_url, batch_size=BATCH, concurrency=2)
    assert result.attempts == 2 and result.rescued == leased
    assert result.counts["sent"] == COUNT == len(await recorded_message_ids(db))
    assert result.summary()["sent"] == COUNT


async def test_a_deadlock_is_a_transient_conflict_not_an_unreachable_server(db: Database) -> None:
    """Two transactions locking the same two rows in opposite orders: Postgres rolls one back
    (40P01). That is a conflict worth retrying, reported as such, not "Postgres is
    unreachable"."""
    from mailpipe.errors import DatabaseConflict
    from mailpipe.retries import is_transient

    await insert_events(db, 2)
    first, second = [
        r["id"] for r in await db.fetch_all("SELECT id FROM communication_events ORDER BY id")
    ]
    locked = [asyncio.Event(), asyncio.Event()]

    async def lock(index: int, a: object, b: object) -> None:
        async with db.transaction() as tx:
            await tx.execute("UPDATE communication_events SET priority = 1 WHERE id = %s", (a,))
            locked[index].set()
            await locked[1 - index].wait()  # both hold their first row: now cross over
            await tx.execute("UPDATE communication_events SET priority = 1 WHERE id = %s", (b,))

    outcomes = await asyncio.gather(
        lock(0, first, second), lock(1, second, first), return_exceptions=True
    )
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], DatabaseConflict), outcomes
    assert "deadlock detected" in str(failures[0]) and "safe to run again" in str(failures[0])
    assert is_transient(failures[0]) and not isinstance(failures[0], DatabaseUnavailable)
