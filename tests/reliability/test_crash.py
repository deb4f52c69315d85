"""Crash: kill -9 a drainer process mid-batch, let its lease run out, drain again.

Promise: 0 lost; the only duplicates are the messages that were in flight when the worker
died (accepted by the server, not yet recorded as sent), each sent again with the same
Message-ID and flagged ``may_be_duplicate``. Each crash point is reached by observation, never
by a sleep or a hook in the engine:

- after claim: the server stalls the EHLO; the rows are claimed (processing, this worker's
  lease) and nothing reached DATA.
- mid-batch: the server delays each DATA reply; the kill comes once it has recorded some
  messages of the batch, before the batch's single recording transaction.
- inside the recording transaction: the test holds an uncommitted confirmation row with the
  Message-ID of one event of the batch, so the drainer's ``insert_confirmations`` waits on
  it after ``finish_events`` already ran; the kill lands there (the worst point: every
  message of the batch accepted, nothing committed).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mailpipe.db import Database
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer
from tests.factories import add_provider, add_template, insert_events
from tests.reliability.support import (
    ENGINE,
    DrainerProcess,
    Figures,
    Rollback,
    expire_leases,
    recorded_message_ids,
    recover_and_reconcile,
    wait_for,
    waiting_on_a_lock,
)

BATCH = 10


async def claimed_by(db: Database, drainer: DrainerProcess) -> int:
    return await db.fetch_value(
        "SELECT count(*) FROM communication_events WHERE status = 'processing'"
        " AND locked_by LIKE %s",
        (f"%{drainer.worker_prefix}%",),
    )


async def engine_sessions_ended(db: Database) -> bool:
    """No engine connection is left: a killed drainer's backends have ended, so whatever it
    had in a transaction is committed (its COMMIT had reached Postgres) or rolled back."""
    return not await db.fetch_value(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s",
        (ENGINE,),
    )


@pytest.fixture
async def slow_queue(
    db: Database, smtpd_factory: Callable[..., SMTPTestServer]
) -> tuple[SMTPTestServer, list[int]]:
    """A provider with one connection (sends in order), a template and 30 events."""
    server = smtpd_factory()
    await add_provider(db, "primary", server, max_connections=1, timeout_seconds=60)
    await add_template(db)
    return server, await insert_events(db, 30)


async def test_kill_after_claim_before_any_send(
    db: Database,
    database_url: str,
    slow_queue: tuple[SMTPTestServer, list[int]],
    drainers: Callable[..., DrainerProcess],
    figures: Figures,
) -> None:
    server, ids = slow_queue
    server.behaviour.ehlo_delay = 60  # the drainer claims, connects, and waits
    drainer = drainers(database_url, batch_size=BATCH)
    await wait_for(lambda: server.connections >= 1, timeout=60, what="the drainer connects")
    assert await claimed_by(db, drainer) == BATCH
    drainer.kill()
    assert server.messages == []
    numbers = await recover_and_reconcile(db, server, ids, in_flight=set(), batch_size=BATCH)
    assert numbers["rescued"] == BATCH
    figures.record("crash", "kill -9 after claim, before SMTP", in_flight=0, **numbers)


async def test_kill_mid_batch_after_some_smtp_accepts(
    db: Database,
    database_url: str,
    slow_queue: tuple[SMTPTestServer, list[int]],
    drainers: Callable[..., DrainerProcess],
    figures: Figures,
) -> None:
    server, ids = slow_queue
    server.behaviour.data_delay = 0.2
    drainer = drainers(database_url, batch_size=BATCH)
    await wait_for(
        lambda: len(server.accepted) >= 3,
        timeout=60,
        what="the server accepts 3 messages of the first batch",
    )
    drainer.kill()
    in_flight = set(server.accepted_message_ids())
    # Nothing of the batch was recorded: its outcomes are written in one transaction.
    assert await recorded_message_ids(db) == set()
    assert 3 <= len(in_flight) < BATCH
    numbers = await recover_and_reconcile(db, server, ids, in_flight, batch_size=BATCH)
    figures.record(
        "crash", "kill -9 mid-batch, after SMTP accepts", in_flight=len(in_flight), **numbers
    )


async def test_kill_inside_the_recording_transaction(
    db: Database,
    database_url: str,
    slow_queue: tuple[SMTPTestServer, list[int]],
    drainers: Callable[..., DrainerProcess],
    figures: Figures,
) -> None:
    server, ids = slow_queue
    first = await db.fetch_value(
        "SELECT message_id FROM communication_events WHERE id = %s", (ids[0],)
    )
    with pytest.raises(Rollback):
        async with db.transaction() as blocker:
            # Uncommitted: the drainer's INSERT ... ON CONFLICT (message_id) waits for it.
            await blocker.execute(
                "INSERT INTO smtp_delivery_confirmations (provider_name, message_id,"
                " recipient_email, status) VALUES ('blocker', %s, 'x@example.com', 'accepted')",
                (first,),
            )
            drainer = drainers(database_url, batch_size=BATCH)
            await wait_for(
                lambda: waiting_on_a_lock(db, ENGINE),
                timeout=60,
                what="the drainer waits inside its recording transaction",
            )
            drainer.kill()
            in_flight = set(server.accepted_message_ids())
            assert len(in_flight) == BATCH  # every message of the batch was accepted
            raise Rollback  # release the row; the dead session then aborts its transaction
    # The dead session's transaction never committed: nothing is sent, the batch is leased.
    assert await recorded_message_ids(db) == set()
    numbers = await recover_and_reconcile(db, server, ids, in_flight, batch_size=BATCH)
    figures.record(
        "crash", "kill -9 inside the recording transaction", in_flight=len(in_flight), **numbers
    )


@pytest.mark.parametrize(
    "kills",
    [
        pytest.param(3, id="3-kills"),
        pytest.param(20, id="20-kills", marks=pytest.mark.heavy),
    ],
)
async def test_repeated_kills_at_random_points(
    db: Database,
    database_url: str,
    smtpd_factory: Callable[..., SMTPTestServer],
    drainers: Callable[..., DrainerProcess],
    figures: Figures,
    kills: int,
) -> None:
    server = smtpd_factory(Behaviour(data_delay=0.01))
    await add_provider(db, "primary", server, max_connections=2, timeout_seconds=60)
    await add_template(db)
    ids = await insert_events(db, kills * 40 + 100)
    rng = random.Random(kills)
    in_flight: list[str] = []  # per kill: what that victim had accepted but not recorded
    for _ in range(kills):
        await expire_leases(db)  # the previous victim's lease runs out
        start = len(server.accepted)
        target = start + rng.randint(1, 3 * BATCH)
        drainer = drainers(database_url, batch_size=BATCH)
        await wait_for(
            lambda target=target: len(server.accepted) >= target,
            timeout=60,
            what=f"the server accepts {target} messages",
        )
        drainer.kill()
        # A kill can land while Postgres commits the victim's recording transaction: read
        # what it recorded once its sessions are gone, not before.
        await wait_for(
            lambda: engine_sessions_ended(db),
            timeout=60,
            what="the killed drainer's database sessions end",
        )
        recorded = await recorded_message_ids(db)
        in_flight += [m.message_id for m in server.accepted[start:] if m.message_id not in recorded]
    # A message in flight at two kills (re-sent by the next victim, killed again before
    # recording it) is accepted three times: each kill adds one copy of what it had in
    # flight, and nothing else is ever sent twice.
    numbers = await recover_and_reconcile(db, server, ids, in_flight, batch_size=BATCH)
    figures.record(
        "crash",
        f"{kills} kill -9 at random points",
        kills=kills,
        in_flight=len(in_flight),
        **numbers,
    )
