"""The sweeper hosted by a deliverer: ``process_email_queue``'s scheduled runs executed inside
the ``mailpipe deliver`` process instead of in a new flow-run process every minute.

Why: a flow-run process pays Python's, Prefect's and mailpipe's imports at every start (about
3.5 CPU-s, measured in docs/deliverer.md), every minute, to find an idle queue empty. The
deliverer is already running; once it has imported Prefect, one more sweeper run in it costs
about 0.1 CPU-s. The runs stay ordinary flow runs of the ``process_email_queue`` deployment:
in the Prefect UI with their logs, artifacts and post-run check, runnable from the UI and
``prefect deployment run``, counted against the deployment's concurrency limit.

How it stays safe beside Prefect workers and ``mailpipe serve``, which also execute that
deployment's runs (and do, whenever no deliverer is running: nothing to switch over):

- it **takes** a run the way a worker does, by proposing Pending; Prefect's
  ``PreventPendingTransitions`` rule makes that atomic, so a run is executed once, by whoever
  took it (a worker's later proposal is refused, and it skips the run);
- it looks :data:`LOOKAHEAD_SECONDS` ahead every :data:`POLL_SECONDS` while workers and serve
  look 10 s ahead, so while it lives it takes the runs before they see them;
- it labels a taken run as ``up``'s workers do (``prefect.worker.name`` with this machine's
  prefix, ``infrastructure_pid`` its own pid), so :mod:`~mailpipe.deploy.recovery` crashes
  the run of a deliverer that was killed, releasing its concurrency slot; a deliverer also
  does this for its predecessors when it starts;
- on stop, runs taken but not started go back to Scheduled (a worker or the next deliverer
  runs them); a run in progress finishes the batch in hand and ends;
- each run executes in a thread of its own with its own event loop: Prefect's flow engine
  installs its SIGTERM handler only on the main thread, where the deliverer keeps its own, and
  a slow run never holds up the deliverer's lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailpipe.delivery.runs import forget_drain_stop, stop_drains_in_thread
from mailpipe.deploy.project import load_deployment_specs, project_dir, project_file
from mailpipe.deploy.recovery import WORKER_LABEL, worker_prefix
from mailpipe.errors import ConfigError

log = logging.getLogger(__name__)

FLOW = "process_email_queue"
DEPLOYMENT = f"{FLOW}/{FLOW}"
POLL_SECONDS = 10.0  # a Prefect worker's own query interval
LOOKAHEAD_SECONDS = 30.0  # > a worker's or serve's prefetch (10 s): taken before they look
MAX_RUNS = 2  # in progress at once here; beyond, a worker takes the run (limit 4 in all)
RETRY_SECONDS = 60.0  # after the Prefect API failed


def sweeper_label(host: str | None = None) -> str:
    """The ``prefect.worker.name`` label of the runs this machine's deliverers take."""
    return f"{worker_prefix(host)}deliverer"


@dataclass
class SweeperStats:
    """What a hosted sweeper did: runs taken, finished by state, given back, lost to others."""

    taken: int = 0
    given_back: int = 0
    lost: int = 0  # another process took the run first, or the server said not now
    finished: dict[str, int] = field(default_factory=dict)
    api_errors: int = 0

    def summary(self) -> dict[str, Any]:
        """The counts, for logs and the deliverer's report."""
        return {
            "taken": self.taken,
            "given_back": self.given_back,
            "lost": self.lost,
            "finished": dict(self.finished),
            "api_errors": self.api_errors,
        }


class HostedSweeper:
    """Executes the ``process_email_queue`` deployment's scheduled runs in this process.

    ``run(stop)`` polls until ``stop`` is set, then gives back what it took and waits for the
    runs in progress. Prefect API failures are logged and retried; they never stop the caller.
    """

    def __init__(
        self,
        *,
        deployment: str = DEPLOYMENT,
        project: Path | None = None,
        poll_seconds: float = POLL_SECONDS,
        lookahead_seconds: float = LOOKAHEAD_SECONDS,
        max_runs: int = MAX_RUNS,
        host: str | None = None,
    ) -> None:
        if poll_seconds <= 0 or lookahead_seconds < 0 or max_runs < 1:
            raise ConfigError("poll_seconds must be > 0, lookahead_seconds >= 0, max_runs >= 1")
        self.deployment = deployment
        self.project = project
        self.poll_seconds = poll_seconds
        self.lookahead_seconds = lookahead_seconds
        self.max_runs = max_runs
        self.label = sweeper_label(host)
        self.stats = SweeperStats()
        self._deployment_id: Any = None
        self._flow: Any = None
        self._runs: dict[Any, asyncio.Task[None]] = {}
        self._threads: dict[Any, int] = {}  # run id -> the thread executing it
        self._stopping = threading.Event()  # read by a run's thread as it starts
        self._missing_logged = False

    # ------------------------------------------------------------------------- the loop

    async def run(self, stop: asyncio.Event) -> SweeperStats:
        """Take and execute due runs until ``stop`` is set; returns what it did."""
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await self._recover_predecessors()
            while not stop.is_set():
                delay = self.poll_seconds
                try:
                    await self._poll(client, stop)
                except Exception as exc:  # the API is down or refused: delivery goes on
                    self.stats.api_errors += 1
                    log.warning(
                        "hosted sweeper: the Prefect API failed (%s: %s); trying again in %.0f s"
                        " (workers run process_email_queue meanwhile)",
                        type(exc).__name__,
                        exc,
                        RETRY_SECONDS,
                    )
                    delay = RETRY_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if self._runs:
                # Runs in progress end after the batch in hand (their state: Completed, the
                # summary saying "stopped"); what is left stays queued for the next run.
                self._stopping.set()  # a run whose thread is only starting stops too
                for ident in list(self._threads.values()):
                    stop_drains_in_thread(ident)
                await asyncio.gather(*self._runs.values(), return_exceptions=True)
        return self.stats

    async def _poll(self, client: Any, stop: asyncio.Event) -> None:
        deployment_id = await self._find_deployment(client)
        if deployment_id is None or len(self._runs) >= self.max_runs:
            return
        horizon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.lookahead_seconds)
        runs = await client.get_scheduled_flow_runs_for_deployments(
            [deployment_id], scheduled_before=horizon, limit=self.max_runs
        )
        for run in sorted(runs, key=_start_time):
            if len(self._runs) >= self.max_runs or stop.is_set():
                break
            if run.id in self._runs or not await self._take(client, run):
                continue
            task = asyncio.create_task(self._execute(client, run, stop))
            self._runs[run.id] = task
            task.add_done_callback(lambda _, run_id=run.id: self._runs.pop(run_id, None))

    async def _find_deployment(self, client: Any) -> Any:
        from prefect.exceptions import ObjectNotFound

        if self._deployment_id is None:
            try:
                self._deployment_id = (await client.read_deployment_by_name(self.deployment)).id
            except ObjectNotFound:
                if not self._missing_logged:
                    log.info(
                        "hosted sweeper: no deployment %s on this Prefect API yet (register it:"
                        " `prefect deploy --all` or `mailpipe serve`); looking again every %.0f s",
                        self.deployment,
                        self.poll_seconds,
                    )
                    self._missing_logged = True
                return None
        return self._deployment_id

    # ------------------------------------------------------------------------- one run

    async def _take(self, client: Any, run: Any) -> bool:
        """Propose Pending, as a worker does; True when this process now owns the run."""
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state

        try:
            state = await propose_state(
                client, Pending(message=f"taken by {self.label} (pid {os.getpid()})"), run.id
            )
        except Abort:
            self.stats.lost += 1  # a worker or another deliverer took it first
            return False
        if not state.is_pending():
            # The deployment's concurrency limit: AwaitingConcurrencySlot or Cancelled (the
            # collision strategy), decided by the server as for any worker.
            self.stats.lost += 1
            return False
        self.stats.taken += 1
        # Labelled like up's workers, with this process as the run's "infrastructure": the
        # recovery of a killed deliverer's runs finds them by these two.
        try:
            await client.update_flow_run_labels(run.id, {WORKER_LABEL: self.label})
            await client.update_flow_run(run.id, infrastructure_pid=str(os.getpid()))
        except Exception as exc:  # the run is ours all the same: run it, never strand it
            log.warning("hosted sweeper: run %s could not be labelled: %s", run.name, exc)
        return True

    async def _execute(self, client: Any, run: Any, stop: asyncio.Event) -> None:
        wait = (_start_time(run) - dt.datetime.now(dt.UTC)).total_seconds()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        if stop.is_set():
            await self._give_back(client, run)
            return
        try:
            flow = self._load_flow()
            fresh = await client.read_flow_run(run.id)
            state = await asyncio.to_thread(
                _run_in_own_loop, flow, fresh, self._threads, self._stopping
            )
            name = state.type.value if state is not None else "UNKNOWN"
        except Exception as exc:  # the engine itself failed: the run must not stay Pending
            name = "CRASHED"
            log.exception("hosted sweeper: run %s could not be executed", run.name)
            await self._crash(client, run, f"{type(exc).__name__}: {exc}")
        self.stats.finished[name] = self.stats.finished.get(name, 0) + 1
        log.info("hosted sweeper: run %s finished %s", run.name, name)

    async def _give_back(self, client: Any, run: Any) -> None:
        from prefect.states import Scheduled

        try:
            await client.set_flow_run_state(
                run.id,
                Scheduled(
                    scheduled_time=_start_time(run),
                    message="given back by a stopping mailpipe deliver",
                ),
                force=True,  # Pending -> Scheduled; releases the concurrency slot
            )
            self.stats.given_back += 1
        except Exception:
            log.exception("hosted sweeper: run %s could not be given back", run.name)

    async def _crash(self, client: Any, run: Any, reason: str) -> None:
        from prefect.states import Crashed

        with contextlib.suppress(Exception):
            await client.set_flow_run_state(
                run.id, Crashed(message=f"mailpipe deliver: {reason}"), force=True
            )

    def _load_flow(self) -> Any:
        """The flow object of the deployment's entrypoint in this project (loaded once)."""
        if self._flow is None:
            from prefect.flows import load_flow_from_entrypoint

            project = self.project or project_dir()
            # By flow name: the deployment may be registered under another name (a second
            # deployment of the same flow), the code is the same.
            flow_name = self.deployment.partition("/")[0]
            specs = {s.flow_name: s for s in load_deployment_specs(project_file(project))}
            spec = specs.get(flow_name)
            if spec is None:
                raise ConfigError(f"no deployment of flow {flow_name} in {project_file(project)}")
            path, _, name = spec.entrypoint.partition(":")
            self._flow = load_flow_from_entrypoint(
                f"{project / path}:{name}", use_placeholder_flow=False
            )
        return self._flow

    async def _recover_predecessors(self) -> None:
        """Crash runs a killed deliverer of this machine took (their slots come back)."""
        from mailpipe.deploy.recovery import crash_abandoned_runs

        try:
            crashed = await crash_abandoned_runs(
                [self.deployment], pools=[], prefix=self.label, unlabelled=False
            )
        except Exception as exc:
            log.warning("hosted sweeper: recovery of abandoned runs failed: %s", exc)
            return
        for run in crashed:
            log.warning("hosted sweeper: crashed run %s, left behind: %s", run.name, run.reason)


def _start_time(run: Any) -> dt.datetime:
    when = run.next_scheduled_start_time or run.expected_start_time
    return when or dt.datetime.now(dt.UTC)


def _run_in_own_loop(
    flow: Any, flow_run: Any, threads: dict[Any, int], stopping: threading.Event
) -> Any:
    """Prefect's flow engine on a run this process took, in this (non-main) thread, which is
    registered in ``threads`` meanwhile (a stopping sweeper stops its drains)."""
    from prefect.flow_engine import run_flow

    ident = threading.get_ident()
    assert ident != threading.main_thread().ident
    threads[flow_run.id] = ident
    if stopping.is_set():  # the sweeper stopped while this thread was starting
        stop_drains_in_thread(ident)
    try:
        result = run_flow(flow, flow_run=flow_run, return_type="state")
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return result
    finally:
        threads.pop(flow_run.id, None)
        forget_drain_stop(ident)
