"""What the drainers of one delivery run share, and a run's counts across task attempts."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailpipe.delivery.result import DrainResult
    from mailpipe.smtp import SMTPError


@dataclass
class RunState:
    """Shared by every drainer of one run (one event loop).

    - ``gate``: claiming a batch and reserving its send quotas happen under it, one drainer
      at a time. Claims come out in priority order, so quotas are then taken in priority order
      too: a drainer holding a priority-9 batch can no longer take the last sends of a window
      while the drainer holding the priority-1 batch claimed before it is still preparing.
    - ``down``: providers taken out of this run (the first failure that did it), so a sibling
      drainer does not hammer a provider that just failed.
    - ``id``: counts a provider's failures once per run in the database, also across the
      processes of :func:`~mailpipe.delivery.drain_in_processes` (they share the id).
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)
    down: dict[str, SMTPError] = field(default_factory=dict)
    recorded_down: set[str] = field(default_factory=set)


# Counts of flow runs whose drain is being retried by Prefect, by run key. Bounded: the entry
# of a run whose last attempt failed is never collected by a successful attempt.
_TALLIES: OrderedDict[str, DrainResult] = OrderedDict()
_MAX_TALLIES = 64


def run_tally(key: str) -> DrainResult:
    """The running total of the delivery run ``key`` (a flow run id): the same object for
    every task attempt of that run, so a retry adds to what the failed attempt recorded."""
    from mailpipe.delivery.result import DrainResult

    tally = _TALLIES.get(key)
    if tally is None:
        tally = _TALLIES[key] = DrainResult(worker="")
        while len(_TALLIES) > _MAX_TALLIES:
            _TALLIES.popitem(last=False)
    _TALLIES.move_to_end(key)
    return tally


def forget_run(key: str) -> None:
    """Drop the running total of ``key`` (its summary has been published)."""
    _TALLIES.pop(key, None)


# Threads whose flow runs' drains must stop: a deliverer executing the sweeper's runs (each in
# a thread of its own) is stopping, and those runs end after the batch in hand instead of
# using their whole time budget. Per thread, so nothing else in the process is affected.
_STOPPING_THREADS: set[int] = set()
_STOPPING_LOCK = threading.Lock()


def stop_drains_in_thread(ident: int) -> None:
    """Ask the drains running in thread ``ident`` to stop after the batch in hand."""
    with _STOPPING_LOCK:
        _STOPPING_THREADS.add(ident)


def forget_drain_stop(ident: int) -> None:
    """The thread ``ident`` is done: a new thread given the same ident starts afresh."""
    with _STOPPING_LOCK:
        _STOPPING_THREADS.discard(ident)


class DrainStop(asyncio.Event):
    """A drain's stop: set by the drain itself (one of its drainers failed), or by
    :func:`stop_drains_in_thread` for the thread it runs in. Drainers only ask ``is_set()``."""

    def is_set(self) -> bool:
        return super().is_set() or threading.get_ident() in _STOPPING_THREADS
