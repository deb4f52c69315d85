"""A data-quality run: the suites chosen, the results folder locked and pruned, a report out.

A run swaps each windowed asset's SQL in memory (never saved) for
``SELECT * FROM (<query>) AS w WHERE <window>`` with ``:since`` bound to the run's start, runs
the committed checkpoints, returns a :class:`~mailpipe.quality.report.QualityReport` and then
updates the Data Docs. Great Expectations itself is driven by :mod:`mailpipe.quality.gx`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from mailpipe.config import Settings, get_settings
from mailpipe.quality.gx import (
    ALL_TABLES_CHECKPOINT,
    build_context,
    build_data_docs,
    cached_context,
    docs_urls,
    run_checkpoints,
    suite_results,
)
from mailpipe.quality.report import QualityReport, log_report
from mailpipe.quality.suites import (
    QualityConfigError,
    SuiteSpec,
    expectations_dir,
    results_dir,
    select_suites,
    suite_specs,
    suites_for_flow,
)

# Serialises checks in one process: GX keeps the current context in a module-level project
# manager, and a windowed run mutates assets in memory.
_RUN_LOCK = threading.Lock()


def run_checks(
    tables: Sequence[str] | None = None,
    since: dt.datetime | None = None,
    database_url: str | None = None,
    *,
    run_name: str = "mailpipe_check",
    checkpoint: str | None = None,
    project_dir: Path | None = None,
    settings: Settings | None = None,
    on_report: Callable[[QualityReport], None] | None = None,
    reuse_context: bool = False,
) -> QualityReport:
    """Run the suites of ``tables`` (default: all) and return what they found.

    ``since``: validate only rows changed since then in tables with a window (the large ones),
    whole tables otherwise; None validates every row. ``checkpoint`` names a committed
    checkpoint to run (its suites are used when ``tables`` is None). ``on_report`` is called
    with the report as soon as the checkpoints ran, before the Data Docs are built (their
    paths are already in it): a worker answers the waiting flow run there. ``reuse_context``
    keeps the GX context between calls (long-lived processes: ``mailpipe check worker``).
    Blocking: GX is synchronous (call :func:`acheck_after_run` from async code).
    """
    settings = settings or get_settings()
    project_dir = (project_dir or expectations_dir()).resolve()
    specs = suite_specs(project_dir)
    names = select_suites(specs, tables)
    database_url = database_url or _database_url(settings)
    out_dir = results_dir(settings)
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    with _RUN_LOCK, _results_lock(out_dir):
        _prune_results(out_dir, settings.quality_keep_runs)
        ctx = (cached_context if reuse_context else build_context)(
            project_dir, out_dir, database_url
        )
        results = run_checkpoints(
            ctx,
            project_dir,
            database_url,
            [specs[n] for n in names],
            since,
            _checkpoint_names(specs, names, checkpoint),
            run_name,
            settings,
        )
        docs_url, pages = docs_urls(ctx, results)
        report = QualityReport(
            run_name=run_name,
            since=since,
            started_at=started_at,
            elapsed_seconds=time.perf_counter() - t0,
            suites=suite_results(results, specs, since, settings, database_url, pages),
            docs_url=docs_url,
        )
        log_report(report)
        try:
            if on_report is not None:
                on_report(report)
        finally:
            build_data_docs(ctx, results)
    return report


def check_after_run(
    flow_name: str,
    since: dt.datetime | None,
    tables: Sequence[str] | None = None,
    *,
    database_url: str | None = None,
    on_report: Callable[[QualityReport], None] | None = None,
    reuse_context: bool = False,
) -> tuple[QualityReport, str]:
    """The check a flow runs at its end: its suites (``tables`` or the committed checkpoint
    named after the flow), windowed to rows changed since the flow run started.

    Returns the report and its markdown summary. Does not raise on broken invariants (the
    caller applies the policy: :func:`mailpipe.quality_checks.enforce_policy`). ``on_report``
    and ``reuse_context``: as in :func:`run_checks`.
    """
    chosen = tables if tables is not None else suites_for_flow(flow_name)
    if tables is None and not chosen:
        raise QualityConfigError(f"no suite lists flow {flow_name!r} in meta.mailpipe.flows")
    report = run_checks(
        chosen,
        since,
        database_url,
        run_name=flow_name,
        checkpoint=flow_name if tables is None else None,
        on_report=on_report,
        reuse_context=reuse_context,
    )
    return report, report.markdown()


async def acheck_after_run(
    flow_name: str,
    since: dt.datetime | None,
    tables: Sequence[str] | None = None,
    *,
    database_url: str | None = None,
) -> tuple[QualityReport, str]:
    """:func:`check_after_run` in a worker thread, so an async flow's event loop stays free."""
    return await asyncio.to_thread(
        check_after_run, flow_name, since, tables, database_url=database_url
    )


def prepare(database_url: str | None = None, settings: Settings | None = None) -> float:
    """Import Great Expectations and build the GX context a long-lived process reuses
    (``mailpipe check worker``); returns the seconds it took."""
    t0 = time.perf_counter()
    settings = settings or get_settings()
    database_url = database_url or _database_url(settings)
    out_dir = results_dir(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _RUN_LOCK:
        cached_context(expectations_dir().resolve(), out_dir, database_url)
    return time.perf_counter() - t0


def _database_url(settings: Settings) -> str:
    from mailpipe.db import database_url  # may read a Prefect Secret block: only when asked

    return database_url(settings)


def _checkpoint_names(
    specs: Mapping[str, SuiteSpec], names: Sequence[str], checkpoint: str | None
) -> list[str]:
    """Committed checkpoints only (an unsaved one would be saved by GX on its first run):
    the flow's, ``all_tables``, or one per suite for a subset."""
    if checkpoint is not None:
        return [checkpoint]
    if set(names) == set(specs):
        return [ALL_TABLES_CHECKPOINT]
    return list(names)


@contextlib.contextmanager
def _results_lock(out_dir: Path) -> Iterator[None]:
    """One check at a time per results folder, across processes: a run prunes old results
    and rebuilds the Data Docs index from all of them, which must not interleave."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _prune_results(out_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` runs per suite, and their Data Docs pages (else they grow
    by one file per suite per flow run, forever, and the docs index with them)."""
    for base in (out_dir / "validations", out_dir / "data_docs" / "validations"):
        if not base.is_dir():
            continue
        for suite_dir in (p for p in base.iterdir() if p.is_dir()):
            runs = sorted(
                (p for p in suite_dir.glob("*/*") if p.is_dir()), key=lambda p: p.name
            )  # run timestamps, e.g. 20261125T110522.9Z
            for old in runs[: max(len(runs) - (keep - 1), 0)]:
                shutil.rmtree(old, ignore_errors=True)
            for run_dir in suite_dir.iterdir():
                if run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()
