"""Runs left behind by a dead worker or serve process of this machine: found and crashed.

A worker that dies between taking a run (Pending: the run holds one of its deployment's
concurrency slots) and starting it leaves the run Pending for ever, and with ``CANCEL_NEW`` every
later run of that deployment is cancelled ("Deployment concurrency limit reached"). ``up`` and
``serve`` call :func:`crash_abandoned_runs` when they start, before their own workers: a run
proposed Crashed gives its slot back (Prefect's ``ReleaseFlowConcurrencySlots`` rule runs on
every transition out of Pending/Running/Cancelling, forced ones too).

Which runs are abandoned (all of them of the given deployments, in Pending, Running or
Cancelling):

- a run a worker of this machine took (its ``prefect.worker.name`` label starts with this
  machine's worker prefix: those workers are dead, their successor is starting) whose flow
  process (``infrastructure_pid``) is not alive here;
- a run still Pending that no worker labelled yet (the worker died within the first second of
  the submission), when no other machine's worker is online to be submitting it right now, or
  when it has been Pending longer than any submission takes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
from dataclasses import dataclass
from typing import Any

from mailpipe.deploy.processes import pid_is_alive

WORKER_LABEL = "prefect.worker.name"
ACTIVE = ("PENDING", "RUNNING", "CANCELLING")
# A submission labels its run within seconds of Pending; older unlabelled ones are dead.
SUBMISSION_SECONDS = 60.0


def worker_prefix(host: str | None = None) -> str:
    """The start of the names ``up`` gives this machine's workers (``mailpipe-HOST-N``)."""
    return f"mailpipe-{host or socket.gethostname()}-"


def worker_name(index: int, host: str | None = None) -> str:
    """The name of this machine's ``index``-th worker (1-based)."""
    return f"{worker_prefix(host)}{index}"


@dataclass(frozen=True)
class CrashedRun:
    """A run set Crashed, and why."""

    id: str
    name: str
    deployment: str
    state: str
    reason: str


def abandoned_because(
    run: Any,
    *,
    prefix: str,
    foreign_workers_online: bool,
    now: dt.datetime,
) -> str | None:
    """Why ``run`` (a Prefect FlowRun) is abandoned, or None when someone may still own it."""
    state = run.state.type.value
    worker = (run.labels or {}).get(WORKER_LABEL)
    if worker and str(worker).startswith(prefix):
        pid = run.infrastructure_pid
        if pid and str(pid).isdigit() and pid_is_alive(int(pid)):
            return None  # its flow process still runs here and will report its end
        where = f"its flow process {pid} is gone" if pid else "it never started"
        return f"{state} since worker {worker} of this machine stopped; {where}"
    if worker or state != "PENDING":
        return None  # another machine's worker, or a run no worker took: not ours to judge
    pending_for = (now - run.state.timestamp).total_seconds()
    if not foreign_workers_online:
        return "PENDING, taken by no worker that is still online"
    if pending_for > SUBMISSION_SECONDS:
        return f"PENDING for {pending_for:.0f} s without a worker starting it"
    return None


async def crash_abandoned_runs(
    deployment_names: list[str],
    *,
    pools: list[str],
    host: str | None = None,
    prefix: str | None = None,
    unlabelled: bool = True,
) -> list[CrashedRun]:
    """Set Crashed every abandoned run of these deployments (``flow/deployment`` names),
    releasing the concurrency slots they hold; returns them.

    ``prefix`` narrows "this machine's" processes (default: every worker name ``up`` gives on
    this host); ``unlabelled=False`` leaves alone the Pending runs no process labelled yet (a
    deliverer judges only its predecessors' runs, not a worker's submission in flight).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType, WorkerStatus
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    prefix = prefix or worker_prefix(host)
    crashed: list[CrashedRun] = []
    async with get_client() as client:
        names: dict[Any, str] = {}
        for name in deployment_names:
            try:
                names[(await client.read_deployment_by_name(name)).id] = name
            except ObjectNotFound:
                continue
        if not names:
            return []
        online = False
        for pool in pools:
            try:
                workers = await client.read_workers_for_work_pool(pool)
            except ObjectNotFound:
                continue
            online = online or any(
                w.status == WorkerStatus.ONLINE and not w.name.startswith(prefix) for w in workers
            )
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=list(names)),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType(s) for s in ACTIVE])
                ),
            )
        )
        now = dt.datetime.now(dt.UTC)
        for run in runs:
            if not unlabelled and not (run.labels or {}).get(WORKER_LABEL):
                continue
            reason = abandoned_because(run, prefix=prefix, foreign_workers_online=online, now=now)
            if reason is None:
                continue
            message = (
                f"mailpipe: left behind by a process that is gone, crashed at start-up: {reason}"
            )
            await client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            crashed.append(
                CrashedRun(str(run.id), run.name, names[run.deployment_id], run.state.name, reason)
            )
    return crashed


async def wait_for_submissions(deployment_names: list[str], *, timeout: float) -> int:
    """Wait (at most ``timeout`` s) until no run of these deployments is being submitted by a
    worker (Pending with no flow process yet); returns how many still are.

    ``up`` calls it before it stops its workers: a worker stopped mid-submission would leave
    the run Pending, holding its deployment's concurrency slot. Once the flow process exists
    (``infrastructure_pid`` set), stopping the worker ends that process, and the run ends.
    """
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        ids = []
        for name in deployment_names:
            with contextlib.suppress(ObjectNotFound):
                ids.append((await client.read_deployment_by_name(name)).id)
        pending = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=ids),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING])),
        )

        async def submitting() -> list[Any]:
            runs = await client.read_flow_runs(flow_run_filter=pending) if ids else []
            return [r for r in runs if not r.infrastructure_pid]

        runs: list[Any] = []
        with anyio.move_on_after(timeout):
            while runs := await submitting():
                await anyio.sleep(0.2)
            return 0
    return len(runs)
