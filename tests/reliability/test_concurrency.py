"""Concurrency: several drainer OS processes on one queue lose nothing and send nothing twice.

Each drainer is a separate Python process with its own connection pool and its own SMTP
connections (``drain_queue`` with two drainers inside, as a ``process_email_queue`` worker
runs), all claiming from one ``communication_events`` table. The SMTP server answers 451 to a
tenth of the messages at random, with the retry delay shortened so that retried events are
due again at once: every event is claimed, released and re-claimed by whichever process gets
there first, many times over. FOR UPDATE SKIP LOCKED and the lease are what keep them apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from mailpipe.db import Database
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer
from tests.factories import add_provider, add_template, insert_events
from tests.reliability.support import DrainerProcess, Figures, events, reconcile

# Retries due almost at once (base 10 ms), and enough of them that 451s never exhaust one.
FAST_RETRIES = {
    "MAILPIPE_RETRY_BASE_SECONDS": "0.01",
    "MAILPIPE_RETRY_MAX_SECONDS": "0.05",
    "MAILPIPE_MAX_RETRIES": "100",
}


@pytest.mark.parametrize(
    ("processes", "count"),
    [
        pytest.param(4, 2_000, id="4x2k"),
        pytest.param(4, 20_000, id="4x20k", marks=pytest.mark.heavy),
    ],
)
async def test_drainer_processes_lose_nothing_and_never_send_twice(
    db: Database,
    database_url: str,
    smtpd_factory: Callable[..., SMTPTestServer],
    drainers: Callable[..., DrainerProcess],
    figures: Figures,
    processes: int,
    count: int,
) -> None:
    server = smtpd_factory(
        Behaviour(fault_mix={"250": 90, "451 4.3.0 try again later": 10}, fault_seed=7)
    )
    await add_provider(db, "primary", server, max_connections=2)
    await add_template(db)
    ids = await insert_events(db, count)

    started = time.perf_counter()
    rounds, per_process = 0, []
    # A drainer stops when nothing is due at that instant; retried events come due a few ms
    # later, so drain in rounds until every event is final (each round: all processes at once).
    while await db.fetch_value(
        "SELECT count(*) FROM communication_events WHERE status NOT IN ('sent', 'failed')"
    ):
        rounds += 1
        assert rounds <= 30, "the queue does not drain"
        running = [
            drainers(database_url, batch_size=100, concurrency=2, env=FAST_RETRIES)
            for _ in range(processes)
        ]
        for drainer in running:
            code, summary, stderr = drainer.result()
            assert code == 0, (summary, stderr[-2000:])
            per_process.append(summary["sent"])
    elapsed = time.perf_counter() - started

    rows = await events(db)
    ledger = reconcile(rows, [server], expected_ids=ids)
    retried = sum(1 for m in server.messages if not m.accepted)
    figures.record(
        "concurrency",
        f"{processes} processes x {count} events",
        processes=processes,
        rounds=rounds,
        faults_injected=retried,
        seconds=round(elapsed, 1),
        **ledger.figures(),
    )
    assert ledger.statuses == {"sent": count}, ledger.statuses
    assert ledger.lost == [] and ledger.unrecorded == [] and ledger.duplicated == 0
    assert len(server.accepted_message_ids()) == count
    assert await db.fetch_value("SELECT count(*) FROM smtp_delivery_confirmations") == count
    # Every 451 became exactly one recorded retry, whichever process took it.
    assert (
        retried > 0
        and await db.fetch_value("SELECT sum(retry_count) FROM communication_events") == retried
    )
    # The processes really shared the work: at least two of the first round sent some. Not
    # necessarily every one: a process that starts (imports, connects) after the others have
    # claimed everything due finds nothing to do and stops with 0 sent.
    assert sum(1 for n in per_process[:processes] if n > 0) >= 2
