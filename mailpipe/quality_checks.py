"""A flow run's post-run data-quality check: asked of a worker, or done here; then acted on.

Importing Great Expectations costs seconds of CPU; a flow that runs every minute would pay it
1440 times a day, on the cores its drain needs. So a flow run files a request in
``quality_checks`` and waits for the report of a ``mailpipe check worker``
(:mod:`mailpipe.quality_worker`, GX imported once); SQL in ``sql/queries/quality.sql``,
protocol in ``sql/migrations/0007_add_quality_checks.sql``.

Nothing is lost with a worker: a flow run checks itself when no worker is running, when
none claims its request within ``MAILPIPE_QUALITY_CLAIM_SECONDS``, or when the worker that
claimed it dies (its advisory lock disappears with its session). Every check, by a worker or
inline, leaves a row in ``quality_checks``: the history ``mailpipe check history`` shows.

Then the flow run acts on the report (:func:`check_flow_run`): the markdown artifact, a
``data_quality`` alert per ``warn`` suite that failed, and the policy (a broken ``fail``
invariant fails the run). Prefect only through :mod:`mailpipe.runtime`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from typing import Any

from mailpipe import alerts, runtime
from mailpipe.config import Settings, get_settings
from mailpipe.db import Database, Jsonb
from mailpipe.errors import MailpipeError
from mailpipe.identity import process_name
from mailpipe.quality import (
    QualityReport,
    acheck_after_run,
    effective_policy,
    log_report,
    suite_specs,
)
from mailpipe.queries import query
from mailpipe.redaction import redact, url_password

log = logging.getLogger(__name__)

REQUEST_CHANNEL = "mailpipe_quality_checks"  # NOTIFYed by request_quality_check
DONE_CHANNEL = "mailpipe_quality_checks_done"  # NOTIFYed by finish_quality_check


class DataQualityError(MailpipeError):
    """A suite with policy ``fail`` found broken invariants; the message names each one."""

    def __init__(self, message: str, report: QualityReport) -> None:
        super().__init__(message)
        self.report = report


async def check_flow_run(flow_name: str, since: dt.datetime) -> QualityReport:
    """Everything a flow does at its end: check its suites on the rows changed since
    ``since`` (answered by a ``mailpipe check worker`` when one runs, else in this process),
    publish the artifact, raise ``warn`` alerts, then fail the run on a broken ``fail``
    invariant (:class:`DataQualityError`). Call from inside a flow run."""
    async with Database(min_size=1, max_size=2) as db:
        report = await post_run_check(
            db, flow_name, since, flow_run_id=runtime.current_flow_run_id()
        )
        log_report(report, runtime.run_logger())  # on the flow run's logger: in the UI
        await publish_quality_artifact(report)
        await raise_quality_alerts(db, report)
    enforce_policy(report)
    return report


async def workers_alive(db: Database) -> int:
    """How many ``mailpipe check worker`` processes hold their liveness lock on this
    database."""
    return int(await db.fetch_value(query("quality_workers_alive")))


# ---------------------------------------------------------------------------- the check


async def post_run_check(
    db: Database,
    flow_name: str,
    since: dt.datetime | None,
    *,
    flow_run_id: str | uuid.UUID | None = None,
    settings: Settings | None = None,
) -> QualityReport:
    """The flow's post-run check: by a worker when one is running, else in this process.

    Returns the report (broken invariants do not raise; see :func:`enforce_policy`).
    Raises :class:`MailpipeError` when the check could not run.
    """
    settings = settings or get_settings()
    params = {
        "flow_name": flow_name,
        "since": since,
        "flow_run_id": str(flow_run_id) if flow_run_id else None,
    }
    # Waiting for a worker's answer LISTENs, which a transaction pooler cannot carry: through
    # one, the flow run checks in its own process instead.
    if not db.transaction_pooler and await workers_alive(db):
        report = await _ask_worker(db, params, settings)
    else:
        checked_by = process_name("inline")
        check_id = await db.fetch_value(
            query("start_inline_quality_check"), {**params, "checked_by": checked_by}
        )
        report = await _check_here(db, check_id, flow_name, since, checked_by)
    # Retention rides along: ~1 row a run is due, an index range finds it.
    await db.execute(query("prune_quality_checks"), {"keep_days": settings.quality_keep_days})
    return report


async def _ask_worker(db: Database, params: dict[str, Any], settings: Settings) -> QualityReport:
    checked_by = process_name("inline")
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
                report = QualityReport.from_dict(state["report"])
                report.checked_by = state["checked_by"]
                specs = suite_specs()
                for suite in report.suites:  # this run's MAILPIPE_QUALITY_POLICIES decide
                    suite.policy = effective_policy(specs[suite.name], settings)
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
) -> QualityReport:
    try:
        report, _ = await acheck_after_run(flow_name, since, database_url=db.url)
    except Exception as exc:
        with contextlib.suppress(MailpipeError):
            await finish_check(db, check_id, checked_by, error=error_text(exc, db.url))
        raise
    await finish_check(db, check_id, checked_by, report=report)
    report.checked_by = checked_by
    return report


def error_text(exc: BaseException, database_url: str) -> str:
    """Why a check could not run, as stored and shown: no password."""
    return redact(f"{type(exc).__name__}: {exc}", [url_password(database_url)])


async def finish_check(
    db: Database,
    check_id: int,
    checked_by: str,
    *,
    report: QualityReport | None = None,
    error: str | None = None,
) -> None:
    """Record the answer to check ``check_id`` (a report, or the error that stopped it); the
    waiting flow run is NOTIFYed at commit."""
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


# ---------------------------------------------------------------------------- acting on it


async def publish_quality_artifact(report: QualityReport, *, key: str | None = None) -> None:
    """Publish the report's markdown as an artifact of the current flow run
    (``data-quality-<run name>``)."""
    await runtime.publish_markdown_artifact(
        key=key or f"data-quality-{report.run_name}".replace("_", "-").lower(),
        markdown=report.markdown(),
        description=f"Data-quality checks after {report.run_name}",
    )


async def raise_quality_alerts(db: Database, report: QualityReport) -> list[alerts.AlertTransition]:
    """Raise a ``data_quality`` alert per ``warn`` suite that failed (and resolve it once the
    suite passes again, or is no longer ``warn``: a ``fail`` suite fails the run instead),
    through the monitoring alert lifecycle (:mod:`mailpipe.alerts`); returns the alert
    transitions."""
    transitions = await alerts.apply_alerts(db, _alert_evaluations(report))
    await alerts.notify(transitions)
    return transitions


def _alert_evaluations(report: QualityReport) -> list[alerts.Evaluation]:
    evaluations = []
    for suite in report.suites:
        if suite.success or suite.policy != "warn":
            evaluations.append(alerts.Evaluation("data_quality", suite.name, "ok"))
            continue
        failed = suite.failed
        evaluations.append(
            alerts.Evaluation(
                "data_quality",
                suite.name,
                "firing",
                severity="warning",
                value=float(sum(r.unexpected_count or 0 for r in failed)),
                threshold=0.0,
                message=f"data quality {suite.name}: " + "; ".join(r.summary() for r in failed),
                details={
                    "run": report.run_name,
                    "invariants": [r.invariant for r in failed],
                    "docs_url": suite.docs_url,
                },
            )
        )
    # Suites this run did not check keep their alert as it is (another flow checks them).
    checked = {suite.name for suite in report.suites}
    evaluations += [
        alerts.Evaluation("data_quality", name, "no_data")
        for name in suite_specs()
        if name not in checked
    ]
    return evaluations


def enforce_policy(report: QualityReport) -> None:
    """Raise :class:`DataQualityError` naming every broken invariant of ``fail`` suites."""
    if not report.failures:
        return
    broken = "; ".join(r.summary() for s in report.failures for r in s.failed)
    where = (
        f" Details: the data-quality artifact and Data Docs ({report.docs_url})."
        if report.docs_url
        else ""
    )
    raise DataQualityError(
        f"data quality failed after {report.run_name}: {broken}. Fix the offending rows or "
        f"the code that wrote them.{where}",
        report,
    )
