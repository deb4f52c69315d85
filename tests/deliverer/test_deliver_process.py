"""``mailpipe deliver`` as a real process: SIGTERM mid-burst stops it cleanly (exit 0, nothing
left processing, nothing sent twice); kill -9 mid-burst loses nothing (the sweeper rescues
its leases)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator

from mailpipe.db import Database
from mailpipe.delivery import drain_queue
from mailpipe.delivery.deliverer import APPLICATION_NAME
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer
from tests.deliverer.support import eventually
from tests.factories import add_provider, add_template, insert_events

BURST = 1500


@contextlib.asynccontextmanager
async def deliver_process(database_url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``mailpipe deliver`` on the test's database, once it says it is ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailpipe",
        "deliver",
        "--poll",
        "0.5",
        "--batch-size",
        "50",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        lines: list[bytes] = []
        async with asyncio.timeout(60):
            while b"mailpipe deliver: ready" not in (line := await process.stderr.readline()):
                lines.append(line)
                assert line, b"".join(lines).decode()
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def burst(db: Database, server: SMTPTestServer) -> None:
    await add_provider(db, "primary", server, max_connections=2)
    await add_template(db)
    await insert_events(db, BURST, priority=5)


async def test_sigterm_mid_burst_finishes_the_batch_and_exits_0(
    db: Database, database_url: str, smtpd_factory: object
) -> None:
    server = smtpd_factory(Behaviour(data_delay=0.003))  # type: ignore[operator]
    async with deliver_process(database_url) as process:
        await burst(db, server)
        await eventually(lambda: len(server.accepted) >= 100, timeout=30, what="sending")
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        async with asyncio.timeout(30):
            output = (await process.stderr.read()).decode()
            assert await process.wait() == 0, output
    rows = await db.fetch_all(
        "SELECT status, may_be_duplicate, count(*) AS n FROM communication_events"
        " GROUP BY 1, 2 ORDER BY 1"
    )
    by_status = {r["status"]: r["n"] for r in rows}
    assert "processing" not in by_status
    assert not any(r["may_be_duplicate"] for r in rows)  # nothing left in doubt
    assert 100 <= by_status["sent"] < BURST  # stopped mid-burst, the rest still queued
    assert by_status["sent"] + by_status["queued"] == BURST
    ids = server.accepted_message_ids()
    assert len(ids) == len(set(ids)) == by_status["sent"]


async def test_kill_9_mid_burst_loses_nothing(
    db: Database, database_url: str, smtpd_factory: object
) -> None:
    server = smtpd_factory(Behaviour(data_delay=0.01))  # type: ignore[operator]
    async with deliver_process(database_url) as process:
        await burst(db, server)
        # Mid-batch (batches of 50): the third is being sent.
        await eventually(lambda: len(server.accepted) >= 120, timeout=30, what="sending")
        process.kill()
        await process.wait()

    async def sessions_gone() -> bool:
        # A statement the dead process sent (a claim) may still commit: count once its
        # sessions are gone.
        return not await db.fetch_value(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (APPLICATION_NAME,),
        )

    await eventually(sessions_gone, what="the killed deliverer's sessions end")
    held = await db.fetch_value(
        "SELECT count(*) FROM communication_events WHERE status = 'processing'"
    )
    assert held > 0, await db.fetch_all(  # it died holding leases
        "SELECT status, count(*) FROM communication_events GROUP BY 1"
    )
    # Time passes: the leases expire (instead of waiting lease_seconds); the sweeper runs.
    await db.execute(
        "UPDATE communication_events SET lease_expires_at = now() - interval '1 second'"
        " WHERE status = 'processing'"
    )
    result = await drain_queue(db, batch_size=200)
    assert result.rescued == held
    rows = await db.fetch_all(
        "SELECT message_id, status, may_be_duplicate FROM communication_events"
    )
    assert {r["status"] for r in rows} == {"sent"}
    sent = Counter(server.accepted_message_ids())
    assert set(sent) == {r["message_id"] for r in rows}  # every event reached the server
    twice = {m for m, n in sent.items() if n > 1}
    # Only a message in flight when it died can go out twice, and it is marked as such.
    assert twice <= {r["message_id"] for r in rows if r["may_be_duplicate"]}
