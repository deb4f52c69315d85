"""What the drainers of one delivery run share, and a run's counts across task attempts."""

from __future__ import annotations

import asyncio
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
