"""Cutover: hand the seed's four pg_cron jobs over to mailpipe's deployments, one safe step at a
time, and back.

``cutover`` pauses the jobs (``cron.alter_job(..., active := false)``), waits until what they
started has finished (their running runs, pg_net's queued HTTP calls, events the old pipeline
holds in ``processing``), then reports the hand-over. ``finalize`` does the same and unschedules
the jobs; ``rollback`` re-activates them, refusing while mailpipe's workers hold events.

Every step reads the state from ``cron.job`` and the queues before acting, so a re-run after a
crash (or after success) does only what is left: re-running is a no-op. Both pipelines are never
active together: the hand-over is reported only once every job reads back inactive and the old
pipeline is drained; a timeout leaves the jobs paused (nothing sends) and says what to do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from mailpipe.adoption import SEED_JOBS
from mailpipe.db import Database, Row
from mailpipe.errors import DatabaseError, MailpipeError
from mailpipe.queries import query

__all__ = [
    "CutoverError",
    "CutoverReport",
    "DrainState",
    "StepResult",
    "cutover",
    "finalize",
    "rollback",
]


class CutoverError(MailpipeError):
    """The cutover cannot go on; the message says where things stand and what to do."""


@dataclass(frozen=True)
class StepResult:
    """One reported step: ``outcome`` is ``done``, ``already`` (nothing to do), ``skipped`` (no
    such job) or ``warning`` (done, but something needs a person's eye)."""

    step: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class DrainState:
    """What the old pipeline still has in flight."""

    running_runs: int
    http_queued: int | None
    processing_events: int
    processing_queue_rows: int | None
    elapsed: float

    @property
    def quiet(self) -> bool:
        """Nothing in flight."""
        return not (
            self.running_runs
            or self.http_queued
            or self.processing_events
            or self.processing_queue_rows
        )

    def describe(self) -> str:
        """One line for a person."""
        parts = [f"{self.running_runs} job runs running"]
        if self.http_queued is not None:
            parts.append(f"{self.http_queued} HTTP calls queued in net.http_request_queue")
        parts.append(f"{self.processing_events} events processing")
        if self.processing_queue_rows is not None:
            parts.append(f"{self.processing_queue_rows} email_processing_queue rows processing")
        return ", ".join(parts)


@dataclass
class CutoverReport:
    """What a cutover command did, step by step, and the jobs as they are now."""

    action: str
    steps: list[StepResult] = field(default_factory=list)
    jobs: list[Row] = field(default_factory=list)
    handed_over: bool = False


OnStep = Callable[[StepResult], None]
OnProgress = Callable[[DrainState], Awaitable[None]]


async def _jobs(db: Database, names: Sequence[str]) -> list[Row]:
    """The named jobs as cron.job has them now; CutoverError when pg_cron is absent."""
    version = await db.fetch_value(query("adoption_extension_version"), {"name": "pg_cron"})
    if version is None:
        raise CutoverError(
            "pg_cron is not installed in this database: there are no cron jobs to hand over. "
            "Check DATABASE_URL points at the app's database (pg_cron lives in one database, "
            "`postgres` on Supabase)"
        )
    return await db.fetch_all(query("cutover_jobs"), {"names": list(names)})


async def _set_active(db: Database, job: Row, active: bool) -> None:
    try:
        await db.fetch_all(
            query("cutover_set_job_active"), {"job_id": job["job_id"], "active": active}
        )
    except DatabaseError as exc:
        raise CutoverError(
            f"could not {'resume' if active else 'pause'} job {job['job_name']} "
            f"(id {job['job_id']}, owned by {job['username']}): {exc}. Connect as the role that "
            "owns the jobs (postgres on Supabase) and run the command again"
        ) from exc


def _emit(report: CutoverReport, on_step: OnStep | None, result: StepResult) -> None:
    report.steps.append(result)
    if on_step is not None:
        on_step(result)


async def _pause(
    db: Database, names: Sequence[str], report: CutoverReport, on_step: OnStep | None
) -> list[Row]:
    jobs = await _jobs(db, names)
    found = {j["job_name"] for j in jobs}
    for name in names:
        if name not in found:
            _emit(report, on_step, StepResult(f"pause {name}", "skipped", "no such job"))
    for job in jobs:
        if job["active"]:
            await _set_active(db, job, False)
            _emit(report, on_step, StepResult(f"pause {job['job_name']}", "done", "paused"))
        else:
            _emit(report, on_step, StepResult(f"pause {job['job_name']}", "already", "paused"))
    # Read back: the hand-over is only reported on what cron.job says, never on what we did.
    jobs = await _jobs(db, names)
    still = [j["job_name"] for j in jobs if j["active"]]
    if still:
        raise CutoverError(
            f"jobs still active after pausing: {', '.join(still)} (someone re-activated them?). "
            "Nothing was handed over; run the command again"
        )
    return jobs


async def _mailpipe_held(db: Database) -> int:
    """Events mailpipe's workers hold under a live lease (0 before adoption: no lease column)."""
    if not await db.fetch_value(
        query("adoption_relation_exists"), {"name": "communication_events"}
    ):
        return 0
    return int(await db.fetch_value(query("cutover_mailpipe_processing")))


async def _drain_state(db: Database, job_ids: list[int], started: float) -> DrainState:
    running = 0
    # cron.job_run_details appeared in pg_cron 1.4; older versions keep no run history.
    if await db.fetch_value(query("adoption_relation_exists"), {"name": "cron.job_run_details"}):
        running = await db.fetch_value(query("cutover_running_runs"), {"job_ids": job_ids})
    http = None
    if await db.fetch_value(query("adoption_relation_exists"), {"name": "net.http_request_queue"}):
        http = await db.fetch_value(query("adoption_net_queue"))
    processing = 0
    if await db.fetch_value(query("adoption_relation_exists"), {"name": "communication_events"}):
        processing = await db.fetch_value(query("cutover_old_pipeline_processing"))
    queue_rows = None
    if await db.fetch_value(query("adoption_relation_exists"), {"name": "email_processing_queue"}):
        queue_rows = await db.fetch_value(query("cutover_app_queue_processing"))
    return DrainState(running, http, processing, queue_rows, time.monotonic() - started)


async def _drain(
    db: Database,
    jobs: list[Row],
    *,
    timeout: float,
    poll_interval: float,
    report: CutoverReport,
    on_step: OnStep | None,
    on_progress: OnProgress | None,
) -> None:
    """Wait until the old pipeline has nothing in flight, twice in a row.

    Twice: pg_cron's scheduler may start a run from its cached job list just as the pause
    commits; that run shows up as ``starting`` by the next look, so one quiet look is not proof.
    """
    started = time.monotonic()
    job_ids = [j["job_id"] for j in jobs]
    quiet_looks = 0
    first = True
    while True:
        state = await _drain_state(db, job_ids, started)
        quiet_looks = quiet_looks + 1 if state.quiet else 0
        if quiet_looks >= 2:
            outcome = "already" if first else "done"
            _emit(
                report,
                on_step,
                StepResult("drain", outcome, f"nothing in flight ({state.describe()})"),
            )
            return
        first = first and state.quiet
        if on_progress is not None:
            await on_progress(state)
        # A quiet look past the deadline still gets its confirming second look.
        if state.elapsed >= timeout and not state.quiet:
            raise CutoverError(
                f"the old pipeline did not drain within {timeout:g} s: {state.describe()}. "
                "The jobs stay paused, so neither pipeline sends. Run the command again to wait "
                "longer (--timeout), look at the rows stuck in processing, or give the queue back "
                "to pg_cron with --rollback"
            )
        await asyncio.sleep(poll_interval)


async def cutover(
    db: Database,
    *,
    jobs: Sequence[str] = SEED_JOBS,
    timeout: float = 300.0,
    poll_interval: float = 1.0,
    on_step: OnStep | None = None,
    on_progress: OnProgress | None = None,
) -> CutoverReport:
    """Pause the jobs, wait for the old pipeline to drain, then report the hand-over."""
    report = CutoverReport("cutover")
    paused = await _pause(db, jobs, report, on_step)
    # Pausing comes first whatever this finds: it is what ends the overlap.
    held = await _mailpipe_held(db)
    if held:
        _emit(
            report,
            on_step,
            StepResult(
                "overlap",
                "warning",
                f"mailpipe's workers already held {held} events while pg_cron was active: both "
                "pipelines ran together until now (start the deployments only after cutover)",
            ),
        )
    await _drain(
        db,
        paused,
        timeout=timeout,
        poll_interval=poll_interval,
        report=report,
        on_step=on_step,
        on_progress=on_progress,
    )
    report.jobs = await _jobs(db, jobs)
    # Never report done while any job could still fire.
    if any(j["active"] for j in report.jobs):
        raise CutoverError("a job was re-activated while draining; run the command again")
    report.handed_over = True
    _emit(
        report,
        on_step,
        StepResult(
            "hand over",
            "done",
            "pg_cron is paused and drained: start mailpipe's deployments now (`mailpipe serve` "
            "or the Prefect deployments); `mailpipe cutover --finalize` once mail flows",
        ),
    )
    return report


async def finalize(
    db: Database,
    *,
    jobs: Sequence[str] = SEED_JOBS,
    timeout: float = 300.0,
    poll_interval: float = 1.0,
    on_step: OnStep | None = None,
    on_progress: OnProgress | None = None,
) -> CutoverReport:
    """Make sure the jobs are paused and drained (a cutover), then unschedule them."""
    report = await cutover(
        db,
        jobs=jobs,
        timeout=timeout,
        poll_interval=poll_interval,
        on_step=on_step,
        on_progress=on_progress,
    )
    report.action = "finalize"
    if not report.jobs:
        _emit(report, on_step, StepResult("unschedule", "already", "no job left"))
    for job in report.jobs:
        await db.fetch_all(query("cutover_unschedule_job"), {"job_id": job["job_id"]})
        _emit(report, on_step, StepResult(f"unschedule {job['job_name']}", "done", "removed"))
    report.jobs = await _jobs(db, jobs)
    return report


async def rollback(
    db: Database, *, jobs: Sequence[str] = SEED_JOBS, on_step: OnStep | None = None
) -> CutoverReport:
    """Re-activate the paused jobs; refuses while mailpipe's workers hold events (stop the
    deployments first), and after ``finalize`` (the jobs are gone)."""
    report = CutoverReport("rollback")
    current = await _jobs(db, jobs)
    if not current:
        raise CutoverError(
            f"none of the jobs ({', '.join(jobs)}) exists: --finalize unscheduled them. "
            "Re-create them with cron.schedule (the seed's commands) to roll back"
        )
    held = await _mailpipe_held(db)
    if held:
        raise CutoverError(
            f"mailpipe's workers hold {held} events under a live lease: stop mailpipe's "
            "deployments first (both pipelines must never run at once), then roll back"
        )
    found = {j["job_name"] for j in current}
    for name in jobs:
        if name not in found:
            _emit(report, on_step, StepResult(f"resume {name}", "skipped", "no such job"))
    for job in current:
        if job["active"]:
            _emit(report, on_step, StepResult(f"resume {job['job_name']}", "already", "active"))
        else:
            await _set_active(db, job, True)
            _emit(report, on_step, StepResult(f"resume {job['job_name']}", "done", "active"))
    report.jobs = await _jobs(db, jobs)
    return report
