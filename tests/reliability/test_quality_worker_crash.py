"""Crash: kill -9 a real ``mailpipe check worker`` in the middle of a flow run's check.

Promise: the check is not lost. The flow run sees the worker's liveness lock go with its
session and checks itself; the row ends answered once, by the flow run. The crash point is
reached by observation: the test holds an ACCESS EXCLUSIVE lock on a table the checkpoint
reads, so the worker, once it has claimed the request, waits on that lock (alive, running)
until it is killed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys

import pytest

from mailpipe import quality_checks
from mailpipe.config import get_settings
from mailpipe.db import Database
from tests.reliability.support import Rollback, wait_for, waiting_on_a_lock


async def test_kill_9_of_the_check_worker_mid_check_loses_no_check(
    db: Database, database_url: str, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MAILPIPE_QUALITY_RESULTS_DIR": str(tmp_path / "worker-quality"),
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "mailpipe", "check", "worker", "--poll", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_for(
            lambda: quality_checks.workers_alive(db),
            timeout=120,
            what="the worker holds its liveness lock",
        )
        settings = get_settings().model_copy(update={"quality_claim_seconds": 60})
        with pytest.raises(Rollback):
            async with db.transaction() as tx:
                await tx.execute("LOCK TABLE smtp_connection_audit IN ACCESS EXCLUSIVE MODE")
                flow_run = asyncio.create_task(
                    quality_checks.post_run_check(
                        db, "monitor_smtp_health", None, settings=settings
                    )
                )
                running = await wait_for(
                    lambda: db.fetch_one(
                        "SELECT id, checked_by FROM quality_checks WHERE status = 'running'"
                    ),
                    timeout=60,
                    what="the worker claimed the request",
                )
                await wait_for(
                    lambda: waiting_on_a_lock(db),
                    timeout=60,
                    what="the worker's checkpoint waits on the table lock",
                )
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
                raise Rollback  # the flow run's own check may read the table again
        with caplog.at_level(logging.WARNING, logger="mailpipe.quality_checks"):
            report = await asyncio.wait_for(flow_run, 120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        log.close()

    assert report.success and report.checked_by and report.checked_by.startswith("inline ")
    assert f"its worker ({running['checked_by']}) stopped" in caplog.text
    rows = await db.fetch_all("SELECT status, checked_by FROM quality_checks")
    assert rows == [{"status": "passed", "checked_by": report.checked_by}]
    assert await quality_checks.workers_alive(db) == 0
