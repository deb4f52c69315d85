"""Helpers of the deliverer tests: bounded waits on what can be observed, and a deliverer
running in this process as a task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from mailpipe.db import Database
from mailpipe.delivery.deliverer import Deliverer, DelivererOptions, Report
from tests.reliability.support import wait_for


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], *, timeout: float = 15.0, what: str = ""
) -> None:
    """Wait until ``check()`` holds (the suites' one poller); fail after ``timeout`` seconds."""
    await wait_for(check, timeout=timeout, what=what or repr(check))


@dataclass
class Running:
    """A deliverer task and the event that stops it."""

    deliverer: Deliverer
    task: asyncio.Task[object]
    stop: asyncio.Event
    db: Database


@contextlib.asynccontextmanager
async def running(
    database_url: str, options: DelivererOptions | None = None, report: Report | None = None
) -> AsyncIterator[Running]:
    """A deliverer on its own connection pool, listening before the body runs; stopped (and
    its task awaited, so a failure shows) on exit."""
    async with Database(
        database_url, min_size=1, max_size=6, application_name="mailpipe deliver"
    ) as db:
        deliverer = Deliverer(db, options or DelivererOptions(poll_seconds=3600), report=report)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(deliverer.run(stop, ready))
        await asyncio.wait_for(ready.wait(), 15)
        # What was due at the start is drained: from now on only a notification (or the
        # poll, when the test sets a short one) makes it drain.
        await eventually(lambda: deliverer.idle or task.done(), what="the deliverer is idle")
        try:
            yield Running(deliverer, task, stop, db)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
