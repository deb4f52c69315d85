"""Post-run data-quality checks answered by a long-lived worker (``mailpipe check worker``).

Importing Great Expectations costs seconds of CPU; a flow that runs every minute would pay it
1440 times a day, on the cores its drain needs. A worker imports it once and keeps its GX
context warm; a flow run files a request in ``quality_checks`` and waits for the report (SQL
in ``sql/queries/quality.sql``, protocol in ``sql/migrations/0007_add_quality_checks.sql``).

Nothing is lost with a worker: a flow run checks itself when no worker is running, when
none claims its request within ``MAILPIPE_QUALITY_CLAIM_SECONDS``, or when the worker that
claimed it dies (its advisory lock disappears with its session). Every check, by a worker or
inline, leaves a row in ``quality_checks``: the history ``mailpipe check history`` shows.

This module does not import Great Expectations; :mod:`mailpipe.quality` does, in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from typing import Any

from mailpipe import quality
from mailpipe.config import Settings, get_settings
from mailpipe.db import Database, Jsonb
from mailpipe.errors import DatabaseUnavailable, MailpipeError
from mailpipe.queries import query

log = logging.getLogger(__name__)

REQUEST_CHANNEL = "mailpipe_quality_checks"
DONE_CHANNEL = "mailpipe_quality_checks_done"
WORKER_APPLICATION_NAME = "mailpipe check worker"


def _whoami(role: str) -> str:
    return f"{role} {socket.gethostname()}:{os.getpid()}"


async def workers_alive(db: Database) -> int:
    """How many ``mailpipe check worker`` processes hold their liveness lock on this
    database."""
    return int(await db.fetch_value(query("quality_workers_alive")))


# ---------------------------------------------------------------------------- flow side


async def post_run_check(
    db: Database,
    flow_name: str,
    since: dt.datetime | None,
    *,
    flow_run_id: str | uuid.UUID | None = None,
    settings: Settings | None = None,
) -> quality.QualityReport:
    """The flow's post-run check: by a worker when one is running, else in this process.

    Returns the report (broken invariants do not raise; see :func:`quality.enforce_policy`).
    Raises :class:`MailpipeError` when the check could not run.
    """
    settings = settings or get_settings()
    params = {
        "flow_name": flow_name,
        "since": since,
        "flow_run_id": str(flow_run_id) if flow_run_id else None,
    }
    if await workers_alive(db):
        report = await _ask_worker(db, params, settings)
    else:
        checked_by = _whoami("inline")
        check_id = await db.fetch_value(
            query("start_inline_quality_check"), {**params, "checked_by": checked_by}
        )
        report = await _check_here(db, check_id, flow_name, since, checked_by)
    # Retention rides along: ~1 row a run is due, an index range finds it.
    await db.execute(query("prune_quality_checks"), {"keep_days": settings.quality_keep_days})
    return report


async def _ask_worker(
    db: Database, params: dict[str, Any], settings: Settings
) -> quality.QualityReport:
    checked_by = _whoami("inline")
    async with db.listen(DONE_CHANNEL) as session:
        # Listening before asking: the answer cannot come before we wait for it.
        row = await session.fetch_one(query("request_quality_check"), params)
        assert row is not None
        check_id = row["id"]
        asked = time.monotonic()
        while True:
            # The answer's NOTIFY ends the wait; the timeout only paces the liveness checks.
            await session.wait(timeout=1.0)
            state = await session.fetch_one(query("quality_check_state"), {"id": check_id})
            assert state is not None
            if state["status"] in ("passed", "failed"):
                report = quality.QualityReport.from_dict(state["report"])
                report.checked_by = state["checked_by"]
                specs = quality.suite_specs()
                for suite in report.suites:  # this run's MAILPIPE_QUALITY_POLICIES decide
                    suite.policy = quality.effective_policy(specs[suite.name], settings)
                log.info("data-quality check %s answered by %s", check_id, state["checked_by"])
                return report
            if state["status"] == "error":
                raise MailpipeError(
                    f"the data-quality check (quality_checks.id {check_id}, "
                    f"{state['checked_by']}) could not run: {state['error']}"
                )
            waited = time.monotonic() - asked
            reason = None
            if state["status"] == "queued" and waited >= settings.quality_claim_seconds:
                reason = f"no worker claimed it within {settings.quality_claim_seconds:g} s"
            elif state["status"] == "running" and not state["worker_alive"]:
                reason = f"its worker ({state['checked_by']}) stopped"
            elif waited >= settings.quality_check_timeout_seconds:
                raise MailpipeError(
                    f"the data-quality check (quality_checks.id {check_id}) by "
                    f"{state['checked_by']} is still running after {waited:.0f} s "
                    "(MAILPIPE_QUALITY_CHECK_TIMEOUT_SECONDS); see that worker's log"
                )
            if reason and await session.fetch_value(
                query("take_over_quality_check"), {"id": check_id, "checked_by": checked_by}
            ):
                log.warning("data-quality check %s: %s; checking in this process", check_id, reason)
                return await _check_here(
                    db, check_id, params["flow_name"], params["since"], checked_by
                )


async def _check_here(
    db: Database, check_id: int, flow_name: str, since: dt.datetime | None, checked_by: str
) -> quality.QualityReport:
    try:
        report, _ = await quality.acheck_after_run(flow_name, since, database_url=db.url)
    except Exception as exc:
        with contextlib.suppress(MailpipeError):
            await _finish(
                db,
                check_id,
                checked_by,
                error=quality.redact(f"{type(exc).__name__}: {exc}", db.url),
            )
        raise
    await _finish(db, check_id, checked_by, report=report)
    report.checked_by = checked_by
    return report


async def _finish(
    db: Database,
    check_id: int,
    checked_by: str,
    *,
    report: quality.QualityReport | None = None,
    error: str | None = None,
) -> None:
    if report is not None:
        status = "passed" if report.success else "failed"
        values = {
            "elapsed_seconds": report.elapsed_seconds,
            "failed_suites": [s.name for s in report.failures],
            "warning_suites": [s.name for s in report.warnings],
            "report": Jsonb(report.as_dict(full=True)),
            "error": None,
        }
    else:
        status = "error"
        values = {
            "elapsed_seconds": None,
            "failed_suites": [],
            "warning_suites": [],
            "report": None,
            "error": error,
        }
    # No row back when another checker took the request over: its answer stands.
    await db.execute(
        query("finish_quality_check"),
        {"id": check_id, "status": status, "checked_by": checked_by, **values},
    )


# ---------------------------------------------------------------------------- worker side


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
    seconds = await asyncio.to_thread(quality.prepare, database_url, settings)
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
    checked_by = _whoami("worker")
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

    def answer(report: quality.QualityReport) -> None:  # in the GX thread
        nonlocal sent
        asyncio.run_coroutine_threadsafe(
            _finish(db, check_id, checked_by, report=report), loop
        ).result()
        sent = True

    t0 = time.perf_counter()
    try:
        report, _ = await asyncio.to_thread(
            quality.check_after_run,
            claimed["flow_name"],
            claimed["since"],
            database_url=database_url,
            on_report=answer,
            reuse_context=True,
        )
    except DatabaseUnavailable:
        raise
    except Exception as exc:  # the flow run reports it; the worker goes on
        message = quality.redact(f"{type(exc).__name__}: {exc}", database_url)
        log.error(
            "data-quality check %s (%s) could not run: %s", check_id, claimed["flow_name"], message
        )
        if not sent:
            await _finish(db, check_id, checked_by, error=message)
        return
    log.info(
        "data-quality check %s (%s): %s in %.2f s (Data Docs included)",
        check_id,
        claimed["flow_name"],
        "passed" if report.success else "FAILED",
        time.perf_counter() - t0,
    )
