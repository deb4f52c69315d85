"""``mailpipe check worker``: answers the flow runs' post-run data-quality checks.

Importing Great Expectations costs seconds of CPU; a worker pays it once and keeps its GX
context warm. It holds a liveness lock while it lives, claims requests from ``quality_checks``
(``FOR UPDATE SKIP LOCKED``, woken by NOTIFY) and answers each before it builds the Data Docs.
The flow run's side of the protocol, and what happens when no worker answers, is
:mod:`mailpipe.quality_checks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from mailpipe.config import Settings, get_settings
from mailpipe.db import Database, require_session
from mailpipe.errors import DatabaseUnavailable
from mailpipe.identity import process_name
from mailpipe.quality import QualityReport, check_after_run, prepare
from mailpipe.quality_checks import REQUEST_CHANNEL, error_text, finish_check
from mailpipe.queries import query

log = logging.getLogger(__name__)

WORKER_APPLICATION_NAME = "mailpipe check worker"


async def run_worker(
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    max_checks: int | None = None,
    poll_seconds: float = 5.0,
    database_url: str | None = None,
    settings: Settings | None = None,
) -> int:
    """Answer post-run check requests until ``stop`` is set (or ``max_checks`` were
    answered); returns how many. ``ready`` is set once flow runs can see the worker.
    Survives database restarts (reconnects with backoff).

    The current check always finishes before the worker stops.
    """
    settings = settings or get_settings()
    stop = stop or asyncio.Event()
    if database_url is None:
        from mailpipe.db import database_url as resolve_url

        database_url = resolve_url(settings)
    # Before loading Great Expectations (seconds): the worker LISTENs and holds a session lock.
    require_session(database_url, "mailpipe check worker (LISTEN and its liveness lock)")
    seconds = await asyncio.to_thread(prepare, database_url, settings)
    log.info("Great Expectations loaded in %.1f s", seconds)
    # Kept across reconnections: checks answered, and whether the last attempt got connected
    # (then the next failure starts the backoff over).
    state = {"answered": 0, "connected": 0}
    backoff = 1.0
    while not stop.is_set() and (max_checks is None or state["answered"] < max_checks):
        try:
            await _serve(database_url, stop, ready, max_checks, state, poll_seconds)
        except DatabaseUnavailable as exc:
            if state["connected"]:
                backoff, state["connected"] = 1.0, 0
            log.warning("%s; retrying in %.0f s", exc, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 60.0)
    return state["answered"]


async def _serve(
    database_url: str,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
    max_checks: int | None,
    state: dict[str, int],
    poll_seconds: float,
) -> None:
    checked_by = process_name("worker")
    async with (
        Database(
            database_url, min_size=1, max_size=2, application_name=WORKER_APPLICATION_NAME
        ) as db,
        db.listen(REQUEST_CHANNEL, application_name=WORKER_APPLICATION_NAME) as session,
    ):
        # Held by this session while it lives: how flow runs know a worker is there.
        row = await session.fetch_one(query("hold_quality_worker_lock"))
        assert row is not None
        log.info("data-quality worker %s ready (listening on %s)", checked_by, REQUEST_CHANNEL)
        state["connected"] = 1
        if ready is not None:
            ready.set()
        while not stop.is_set() and (max_checks is None or state["answered"] < max_checks):
            claimed = await db.fetch_one(
                query("claim_quality_check"), {"checked_by": checked_by, "worker_pid": row["pid"]}
            )
            if claimed is None:
                waited = 0.0
                while waited < poll_seconds and not stop.is_set():
                    t0 = time.monotonic()
                    if await session.wait(timeout=min(1.0, poll_seconds - waited)):
                        break
                    waited += time.monotonic() - t0
                continue
            await _answer(db, claimed, checked_by, database_url)
            state["answered"] += 1


async def _answer(
    db: Database, claimed: dict[str, Any], checked_by: str, database_url: str
) -> None:
    """Run one claimed check; the answer goes out before the Data Docs are built."""
    loop = asyncio.get_running_loop()
    check_id = claimed["id"]
    sent = False

    def answer(report: QualityReport) -> None:  # in the GX thread
        nonlocal sent
        asyncio.run_coroutine_threadsafe(
            finish_check(db, check_id, checked_by, report=report), loop
        ).result()
        sent = True

    t0 = time.perf_counter()
    try:
        report, _ = await asyncio.to_thread(
            check_after_run,
            claimed["flow_name"],
            claimed["since"],
            database_url=database_url,
            on_report=answer,
            reuse_context=True,
        )
    except DatabaseUnavailable:
        raise
    except Exception as exc:  # the flow run reports it; the worker goes on
        message = error_text(exc, database_url)
        log.error(
            "data-quality check %s (%s) could not run: %s", check_id, claimed["flow_name"], message
        )
        if not sent:
            await finish_check(db, check_id, checked_by, error=message)
        return
    log.info(
        "data-quality check %s (%s): %s in %.2f s (Data Docs included)",
        check_id,
        claimed["flow_name"],
        "passed" if report.success else "FAILED",
        time.perf_counter() - t0,
    )
