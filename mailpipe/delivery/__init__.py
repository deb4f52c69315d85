"""The delivery engine behind ``process_email_queue``: claim, render, send, confirm, retry.

One drainer drains the queue in batches until it is empty or its time budget is spent.
Per batch: one claim (``FOR UPDATE SKIP LOCKED`` under a lease), one template and one
suppression lookup, one quota reservation per provider, then plain asyncio sends over a few
persistent SMTP connections per provider, then one transaction that records every outcome.
Nothing here knows about Prefect. The parts, each readable on its own:

- :mod:`~mailpipe.delivery.drainer`: the loop, a run's drainers on one event loop, their result;
- :mod:`~mailpipe.delivery.tasks`: drainers in OS processes; a flow run's total across retries;
- :mod:`~mailpipe.delivery.preparing`: a claimed batch validated, rendered, suppressions dropped;
- :mod:`~mailpipe.delivery.routing`: quotas, sending, failover between providers;
- :mod:`~mailpipe.delivery.outcomes`: the outcome words and the retry policy;
- :mod:`~mailpipe.delivery.recording`: a batch's outcomes written in one transaction;
- :mod:`~mailpipe.delivery.runs`: what a run's drainers share, a run's total across retries;
- :mod:`~mailpipe.delivery.summary`: a run's log line, table and page;
- :mod:`~mailpipe.delivery.preview`: the message bytes of an event, and previews.
"""

from __future__ import annotations

from mailpipe.delivery.drainer import Drainer, drain_queue, split_max_events, worker_name
from mailpipe.delivery.outcomes import OUTCOMES, Outcome, RetryPolicy
from mailpipe.delivery.preview import (
    PREVIEW_RECIPIENT,
    Preview,
    build_event_message,
    preview_message,
)
from mailpipe.delivery.result import DrainResult
from mailpipe.delivery.runs import RunState
from mailpipe.delivery.tasks import drain_in_processes, drain_run

__all__ = [
    "OUTCOMES",
    "PREVIEW_RECIPIENT",
    "DrainResult",
    "Drainer",
    "Outcome",
    "Preview",
    "RetryPolicy",
    "RunState",
    "build_event_message",
    "drain_in_processes",
    "drain_queue",
    "drain_run",
    "preview_message",
    "split_max_events",
    "worker_name",
]
