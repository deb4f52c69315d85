"""What a flow task runs: the drain in OS processes, and one task attempt of a run's drain.

:func:`drain_run` keeps a run's total across Prefect's attempts of its task, so the summary of a
run retried after a lost connection counts what every attempt recorded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

from mailpipe.db import Database, database_url
from mailpipe.delivery.drainer import drain_queue, split_max_events
from mailpipe.delivery.result import DrainResult, combine_results
from mailpipe.delivery.runs import forget_run, run_tally
from mailpipe.errors import MailpipeError


def _drain_process(
    url: str,
    batch_size: int,
    concurrency: int,
    time_budget: float,
    max_events: int | None,
    run_id: str,
) -> tuple[DrainResult, BaseException | None]:
    """Entry point of one drainer process: its own event loop and connection pool. Returns
    what it recorded, and the error that stopped it (raised again by the parent)."""
    recorded = DrainResult(worker=f"{socket.gethostname()}:{os.getpid()}")

    async def go() -> DrainResult:
        async with Database(url, min_size=1, max_size=concurrency + 2) as db:
            return await drain_queue(
                db,
                batch_size=batch_size,
                concurrency=concurrency,
                time_budget=time_budget,
                max_events=max_events,
                tally=recorded,
                run_id=run_id,
            )

    try:
        result = asyncio.run(go())  # plain dataclasses: pickled back to the parent
    except Exception as exc:
        return recorded, exc
    result.elapsed_seconds = recorded.elapsed_seconds
    return result, None


def drain_in_processes(
    url: str,
    *,
    processes: int,
    batch_size: int = 200,
    concurrency: int = 1,
    time_budget: float = 50.0,
    max_events: int | None = None,
    tally: DrainResult | None = None,
) -> DrainResult:
    """Drain with ``processes`` OS processes, to use every core (one Python process tops out
    at one core of SMTP and MIME work). The queue's SKIP LOCKED claims keep them apart; they
    share one run id (a provider's failures count once). What every process recorded is
    added to ``tally``, also when one of them failed (its error is raised)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if processes < 1:
        raise MailpipeError("processes must be >= 1")
    shares = split_max_events(max_events, processes)
    run_id = uuid.uuid4().hex
    context = multiprocessing.get_context("spawn")  # no inherited sockets, locks or loops
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [
            pool.submit(_drain_process, url, batch_size, concurrency, time_budget, share, run_id)
            for share in shares
        ]
        done = [f.result() for f in futures]
    results = [r for r, _ in done]
    if tally is not None:
        for r in results:
            tally.merge(r)
    errors = [e for _, e in done if e is not None]
    if errors:
        raise errors[0]
    return combine_results(results)


async def drain_run(
    run_key: str,
    *,
    batch_size: int = 200,
    concurrency: int = 1,
    time_budget: float = 50.0,
    max_events: int | None = None,
    processes: int = 1,
    url: str | None = None,
) -> DrainResult:
    """One attempt of a flow run's drain (``process_email_queue``'s task); returns the whole
    run's result so far.

    ``run_key`` (the flow run id) ties attempts together: when an attempt fails (Postgres
    restarted, say) and Prefect retries the task, the next attempt adds to what the failed
    one recorded, and its summary counts the whole run. ``max_events`` holds for the run.
    """
    tally = run_tally(run_key)
    tally.attempts += 1
    remaining = None if max_events is None else max_events - tally.events
    if remaining is not None and remaining <= 0:
        tally.stopped_by = "max_events"
    elif processes > 1:
        await asyncio.to_thread(
            drain_in_processes,
            url or database_url(),
            processes=processes,
            batch_size=batch_size,
            concurrency=concurrency,
            time_budget=time_budget,
            max_events=remaining,
            tally=tally,
        )
    else:
        async with Database(url, max_size=concurrency + 2) as db:
            await drain_queue(
                db,
                batch_size=batch_size,
                concurrency=concurrency,
                time_budget=time_budget,
                max_events=remaining,
                tally=tally,
            )
    forget_run(run_key)  # done: a later attempt of the same key would start a new total
    return tally
