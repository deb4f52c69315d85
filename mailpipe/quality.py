"""Data quality: Great Expectations suites that check the table invariants after each flow run.

The only module that imports ``great_expectations``, and only inside the functions that run
checks (the import takes seconds). Suites are version-controlled JSON in
``expectations/expectations/<table>.json`` (one per table); each suite's ``meta.mailpipe``
says which SQL it validates (``query``), how that SQL is narrowed to the rows a run could have
changed (``window``), its policy (``fail`` or ``warn``) and the flows that check it (``flows``).
``expectations/great_expectations.yml`` holds no credentials: the connection string and the
results folder are substituted from the runtime environment given to the GX context, never
written to disk nor to ``os.environ``.

A run swaps each windowed asset's SQL in memory (never saved) for
``SELECT * FROM (<query>) AS w WHERE <window>`` with ``:since`` bound to the run's start, runs
the checkpoint with ``COMPLETE`` results (the only format that returns the rows an
``UnexpectedRowsExpectation`` found), updates Data Docs and returns a :class:`QualityReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailpipe.config import Settings, get_settings
from mailpipe.errors import ConfigError, MailpipeError
from mailpipe.redaction import redact as _redact
from mailpipe.redaction import url_password

if TYPE_CHECKING:  # pragma: no cover - typing only, never imported at run time
    from mailpipe.db import Database

log = logging.getLogger(__name__)

DATASOURCE = "mailpipe"
BATCH_DEFINITION = "all_rows"
ALL_TABLES_CHECKPOINT = "all_tables"
ROW_KEY = "row_key"  # every asset's SQL exposes one: samples name rows, not just values
POLICIES = ("fail", "warn")
ENV_DATABASE_URL = "MAILPIPE_GX_DATABASE_URL"
ENV_RESULTS_DIR = "MAILPIPE_QUALITY_RESULTS_DIR"
# Rows are stamped by the database clock, ``since`` by the worker's: a margin keeps clock skew
# from hiding a row the run changed in its first seconds.
WINDOW_MARGIN = dt.timedelta(seconds=60)
SAMPLE_ROWS = 5  # unexpected rows or values shown per failed expectation in reports

# Serialises checks in one process: GX keeps the current context in a module-level project
# manager, and a windowed run mutates assets in memory.
_RUN_LOCK = threading.Lock()


class DataQualityError(MailpipeError):
    """A suite with policy ``fail`` found broken invariants; the message names each one."""

    def __init__(self, message: str, report: QualityReport) -> None:
        super().__init__(message)
        self.report = report


class QualityConfigError(ConfigError):
    """The suites in ``expectations/`` cannot be read or do not match what was asked."""


# ---------------------------------------------------------------------------- suite specs


@dataclass(frozen=True)
class SuiteSpec:
    """How one suite runs, from its JSON ``meta.mailpipe`` (read without importing GX)."""

    name: str
    table: str
    query: str
    window: str | None
    policy: str
    flows: tuple[str, ...]
    expectations: int
    policy_reason: str = ""

    def batch_query(self, since: dt.datetime | None) -> str:
        """The SQL validated: the whole ``query``, or its rows changed since ``since``."""
        if since is None or self.window is None:
            return self.query
        if not isinstance(since, dt.datetime) or since.tzinfo is None:
            raise QualityConfigError(
                "since must be a timezone-aware datetime (e.g. datetime.now(UTC))"
            )
        # isoformat() of a datetime is the only value put into SQL: no user text reaches it.
        bound = f"'{window_start(since)}'::timestamptz"
        return f"SELECT * FROM ({self.query}) AS w WHERE ({self.window.replace(':since', bound)})"


def window_start(since: dt.datetime) -> str:
    """Where a windowed suite's rows start (ISO 8601, UTC): ``since`` minus the clock-skew
    margin."""
    return (since - WINDOW_MARGIN).astimezone(dt.UTC).isoformat()


def expectations_dir() -> Path:
    """The GX project folder: ``expectations/`` in the wheel or at the checkout's root."""
    packaged = Path(__file__).parent / "expectations"
    if (packaged / "great_expectations.yml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "expectations"


def results_dir(settings: Settings | None = None) -> Path:
    """Where validation results and Data Docs go (never inside ``expectations/``)."""
    settings = settings or get_settings()
    return (settings.quality_results_dir or settings.data_dir / "quality").expanduser().resolve()


@lru_cache(maxsize=8)
def _load_specs(project_dir: Path) -> dict[str, SuiteSpec]:
    specs: dict[str, SuiteSpec] = {}
    for path in sorted((project_dir / "expectations").glob("*.json")):
        try:
            suite = json.loads(path.read_text(encoding="utf-8"))
            meta = suite["meta"]["mailpipe"]
            spec = SuiteSpec(
                name=suite["name"],
                table=meta["table"],
                query=meta["query"].strip(),
                window=meta.get("window"),
                policy=meta["policy"],
                flows=tuple(meta.get("flows", ())),
                expectations=len(suite["expectations"]),
                policy_reason=meta.get("policy_reason", ""),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise QualityConfigError(
                f"suite file {path} is not a mailpipe suite ({type(exc).__name__}: {exc}); "
                "each needs meta.mailpipe with table, query, window, policy and flows"
            ) from None
        if spec.policy not in POLICIES:
            raise QualityConfigError(
                f"suite {spec.name}: policy must be fail or warn, not {spec.policy!r}"
            )
        if spec.window is not None and ":since" not in spec.window:
            raise QualityConfigError(f"suite {spec.name}: window must use :since")
        specs[spec.name] = spec
    if not specs:
        raise QualityConfigError(f"no suites in {project_dir / 'expectations'}")
    return specs


def suite_specs(project_dir: Path | None = None) -> dict[str, SuiteSpec]:
    """Every suite by name (= table name), from the JSON files; cheap, no GX import."""
    return _load_specs((project_dir or expectations_dir()).resolve())


def suites_for_flow(flow_name: str, project_dir: Path | None = None) -> list[str]:
    """The suites a flow checks at its end (the tables it writes)."""
    return [s.name for s in suite_specs(project_dir).values() if flow_name in s.flows]


def effective_policy(spec: SuiteSpec, settings: Settings | None = None) -> str:
    """The suite's policy, unless ``MAILPIPE_QUALITY_POLICIES`` overrides it."""
    settings = settings or get_settings()
    policy = settings.quality_policies.get(spec.name, spec.policy)
    if policy not in POLICIES:
        raise QualityConfigError(
            f"MAILPIPE_QUALITY_POLICIES: {spec.name} must be fail or warn, not {policy!r}"
        )
    return policy


# ---------------------------------------------------------------------------- results


@dataclass
class ExpectationResult:
    """One expectation's outcome on one batch."""

    invariant: str  # the stable name, e.g. communication_events.retry_count_within_max
    description: str
    expectation_type: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    element_count: int | None = None
    sample: list[Any] = field(default_factory=list)
    error: str | None = None  # the check could not run (SQL error, database down)

    def summary(self) -> str:
        """One line: what broke and how much."""
        if self.error:
            return f"{self.invariant}: could not be checked ({self.error})"
        of = f" of {self.element_count}" if self.element_count is not None else ""
        return (
            f"{self.invariant}: {self.unexpected_count} unexpected row(s){of} ({self.description})"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "invariant": self.invariant,
            "description": self.description,
            "expectation_type": self.expectation_type,
            "column": self.column,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "element_count": self.element_count,
            "sample": self.sample,
            "error": self.error,
        }


@dataclass
class SuiteResult:
    """One suite's outcome."""

    name: str
    table: str
    policy: str
    window: str | None  # the window's start (ISO 8601), None: whole table
    success: bool
    evaluated: int
    results: list[ExpectationResult]
    docs_url: str | None = None

    @property
    def failed(self) -> list[ExpectationResult]:
        """The expectations that failed or could not run."""
        return [r for r in self.results if not r.success]

    def as_dict(self, *, full: bool = False) -> dict[str, Any]:
        """JSON-ready: the failed expectations only (passing ones carry no information to a
        reader), or with ``full`` every one (what :meth:`from_dict` reads back)."""
        out = {
            "suite": self.name,
            "table": self.table,
            "policy": self.policy,
            "window_since": self.window,
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": [r.as_dict() for r in self.failed],
            "docs_url": self.docs_url,
        }
        if full:
            out["results"] = [r.as_dict() for r in self.results]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteResult:
        """The inverse of ``as_dict(full=True)``."""
        return cls(
            name=data["suite"],
            table=data["table"],
            policy=data["policy"],
            window=data["window_since"],
            success=data["success"],
            evaluated=data["evaluated"],
            results=[ExpectationResult(**r) for r in data["results"]],
            docs_url=data.get("docs_url"),
        )


@dataclass
class QualityReport:
    """What one checkpoint run found, suite by suite."""

    run_name: str
    since: dt.datetime | None
    started_at: dt.datetime
    elapsed_seconds: float
    suites: list[SuiteResult]
    docs_url: str | None = None
    checked_by: str | None = None  # set for post-run checks: "worker host:pid" or "inline ..."

    @property
    def success(self) -> bool:
        """Every suite passed."""
        return all(s.success for s in self.suites)

    @property
    def failures(self) -> list[SuiteResult]:
        """Failed suites whose policy is ``fail``: the flow run must end Failed."""
        return [s for s in self.suites if not s.success and s.policy == "fail"]

    @property
    def warnings(self) -> list[SuiteResult]:
        """Failed suites whose policy is ``warn``: the run stays Completed, an alert fires."""
        return [s for s in self.suites if not s.success and s.policy == "warn"]

    def broken_invariants(self, policy: str | None = None) -> list[str]:
        """Names of the failed expectations (of suites with ``policy`` when given)."""
        return [r.invariant for s in self.suites if policy in (None, s.policy) for r in s.failed]

    def as_dict(self, *, full: bool = False) -> dict[str, Any]:
        """JSON-ready, for ``mailpipe check --json`` and logs; ``full`` keeps every
        expectation's result (stored in ``quality_checks.report``, read by :meth:`from_dict`)."""
        return {
            "run_name": self.run_name,
            "success": self.success,
            "since": self.since.isoformat() if self.since else None,
            "started_at": self.started_at.isoformat(),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "failures": [s.name for s in self.failures],
            "warnings": [s.name for s in self.warnings],
            "suites": [s.as_dict(full=full) for s in self.suites],
            "docs_url": self.docs_url,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityReport:
        """The inverse of ``as_dict(full=True)``."""
        since = data.get("since")
        return cls(
            run_name=data["run_name"],
            since=dt.datetime.fromisoformat(since) if since else None,
            started_at=dt.datetime.fromisoformat(data["started_at"]),
            elapsed_seconds=data["elapsed_seconds"],
            suites=[SuiteResult.from_dict(s) for s in data["suites"]],
            docs_url=data.get("docs_url"),
        )

    def markdown(self) -> str:
        """A summary for a Prefect artifact: failed expectations and sample unexpected rows."""
        verdict = (
            "all invariants hold"
            if self.success
            else f"{len(self.failures)} suite(s) failed, {len(self.warnings)} warning(s)"
        )
        scope = (
            f"rows changed since {self.since.isoformat(timespec='seconds')} in large "
            "tables, whole small tables"
            if self.since
            else "whole tables"
        )
        lines = [
            f"## Data quality ({self.run_name}): {verdict}",
            "",
            f"Checked {scope} in {self.elapsed_seconds:.1f} s"
            + (f" by {self.checked_by}." if self.checked_by else "."),
            "",
            "| suite | policy | result | expectations |",
            "|---|---|---|---|",
        ]
        for s in self.suites:
            result = (
                "passed" if s.success else ("**FAILED**" if s.policy == "fail" else "**warning**")
            )
            lines.append(
                f"| {s.name} | {s.policy} | {result} | "
                f"{s.evaluated - len(s.failed)}/{s.evaluated} |"
            )
        for s in self.suites:
            for r in s.failed:
                lines += ["", f"### {r.invariant} ({s.policy})", "", _md(r.description), ""]
                if r.error:
                    lines.append(f"Could not be checked: `{_md(r.error)}`")
                    continue
                of = f" of {r.element_count}" if r.element_count is not None else ""
                lines.append(f"{r.unexpected_count} unexpected row(s){of}. Sample:")
                lines += ["", *_md_table(r.sample)]
        if self.docs_url:
            lines += ["", f"Data Docs: {self.docs_url}"]
        return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(sample: Sequence[Any]) -> list[str]:
    if not sample:
        return ["(no sample)"]
    if all(isinstance(row, Mapping) for row in sample):
        columns = list(dict.fromkeys(k for row in sample for k in row))
        return [
            f"| {' | '.join(columns)} |",
            f"|{'---|' * len(columns)}",
            *(f"| {' | '.join(_md(str(row.get(c, ''))) for c in columns)} |" for row in sample),
        ]
    return [f"- `{_md(str(value))}`" for value in sample]


# ---------------------------------------------------------------------------- running


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
    names = _select_suites(specs, tables)
    if database_url is None:
        from mailpipe.db import database_url as resolve_url

        database_url = resolve_url(settings)
    out_dir = results_dir(settings)
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    with _RUN_LOCK, _results_lock(out_dir):
        _prune_results(out_dir, settings.quality_keep_runs)
        context = (_cached_context if reuse_context else _context)(
            project_dir, out_dir, database_url
        )
        results = _run_checkpoints(
            context,
            project_dir,
            database_url,
            [specs[n] for n in names],
            since,
            _checkpoint_names(specs, names, checkpoint),
            run_name,
            settings,
        )
        # Page paths are known before the pages exist: the report can go out first.
        keys = [key for result in results for key in result.run_results]
        docs = context.get_docs_sites_urls(only_if_exists=False)
        pages: dict[str, str] = {}
        for key, vr in ((k, v) for r in results for k, v in r.run_results.items()):
            urls = context.get_docs_sites_urls(resource_identifier=key, only_if_exists=False)
            if urls and urls[0].get("site_url"):
                pages[vr.suite_name] = urls[0]["site_url"]
        report = QualityReport(
            run_name=run_name,
            since=since,
            started_at=started_at,
            elapsed_seconds=time.perf_counter() - t0,
            suites=_suite_results(results, specs, since, settings, database_url, pages),
            docs_url=docs[0]["site_url"] if docs else None,
        )
        log_report(report)
        try:
            if on_report is not None:
                on_report(report)
        finally:
            # Data Docs once per run (this run's pages and one index) rather than a docs
            # action per checkpoint result: the index is rebuilt from every kept result.
            context.build_data_docs(resource_identifiers=keys)
    return report


@contextlib.contextmanager
def _results_lock(out_dir: Path) -> Iterator[None]:
    """One check at a time per results folder, across processes: a run prunes old results
    and rebuilds the Data Docs index from all of them, which must not interleave."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _select_suites(specs: Mapping[str, SuiteSpec], tables: Sequence[str] | None) -> list[str]:
    if tables is None:
        return list(specs)
    unknown = [t for t in tables if t not in specs]
    if unknown:
        raise QualityConfigError(f"no suite for {', '.join(unknown)}; suites: {', '.join(specs)}")
    return list(dict.fromkeys(tables))


def _context(project_dir: Path, out_dir: Path, database_url: str) -> Any:
    """A GX file context on ``expectations/`` with the URL and results folder substituted."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # ~230 INFO lines a run
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from mailpipe.db import sqlalchemy_url

    _share_data_docs_templates()
    _probe_query_columns_without_rows()
    context = gx.get_context(
        mode="file",
        context_root_dir=str(project_dir),
        runtime_environment={
            ENV_DATABASE_URL: sqlalchemy_url(database_url),
            ENV_RESULTS_DIR: str(out_dir),
        },
    )
    # In memory only (also set in great_expectations.yml): tqdm bars on stderr otherwise.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


_warm: dict[str, Any] = {}


def _cached_context(project_dir: Path, out_dir: Path, database_url: str) -> Any:
    """The previous call's context while nothing it was built from changed (the project's
    files, the results folder, the database): saves rebuilding it and reconnecting."""
    files = sorted(p for p in project_dir.rglob("*") if p.suffix in (".json", ".yml"))
    key = (
        str(project_dir),
        str(out_dir),
        database_url,
        tuple((str(p), p.stat().st_mtime_ns) for p in files),
    )
    if _warm.get("key") != key:
        _warm.clear()
        _warm.update(key=key, context=_context(project_dir, out_dir, database_url))
    return _warm["context"]


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


def _share_data_docs_templates() -> None:
    """Compile Data Docs templates once per process instead of once per page.

    GX renders every page with a new jinja ``Environment`` and so recompiles ~50 templates
    each time: about 3 s of a 4 s docs update. One shared in-memory bytecode cache (jinja
    checks each template's source checksum before reusing it) removes that cost.
    """
    import jinja2
    from great_expectations.render.view import view

    if getattr(view, "_mailpipe_shared_templates", False):
        return

    class MemoryBytecodeCache(jinja2.BytecodeCache):
        def __init__(self) -> None:
            self.code: dict[str, bytes] = {}

        def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            if bucket.key in self.code:
                bucket.bytecode_from_string(self.code[bucket.key])

        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            self.code[bucket.key] = bucket.bytecode_to_string()

    cache = MemoryBytecodeCache()

    class SharedCacheEnvironment(jinja2.Environment):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("bytecode_cache", cache)
            super().__init__(*args, **kwargs)

    view.Environment = SharedCacheEnvironment
    view._mailpipe_shared_templates = True


def _probe_query_columns_without_rows() -> None:
    """Learn a query asset's columns with ``LIMIT 0`` instead of running the whole query.

    To list the columns of a query asset GX 1.x executes its SQL and keeps only the column
    names: every row travels to the client, several times per suite (4-5 s each on a 1M-row
    table, measured by bench/quality_overhead.py). Same answer, no rows.
    """
    import sqlalchemy as sa
    from great_expectations.expectations.metrics import util

    original = util.column_reflection_fallback
    if getattr(original, "_mailpipe_limit_0", False):
        return

    def column_reflection_fallback(
        selectable: Any, dialect: Any, sqlalchemy_engine: Any, schema_name: str | None = None
    ) -> Any:
        if isinstance(selectable, sa.TextClause):
            selectable = sa.text(f"SELECT * FROM ({selectable.text}) AS columns_probe LIMIT 0")
        return original(selectable, dialect, sqlalchemy_engine, schema_name)

    column_reflection_fallback._mailpipe_limit_0 = True  # type: ignore[attr-defined]
    util.column_reflection_fallback = column_reflection_fallback


def _run_checkpoints(
    context: Any,
    project_dir: Path,
    database_url: str,
    specs: Sequence[SuiteSpec],
    since: dt.datetime | None,
    checkpoints: Sequence[str],
    run_name: str,
    settings: Settings,
) -> list[Any]:
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.exceptions import DataContextError

    try:
        datasource = context.data_sources.get(DATASOURCE)
        for spec in specs:
            # In memory only: nothing below saves the datasource, so the committed SQL stays.
            datasource.get_asset(spec.name).query = spec.batch_query(since)
        loaded = [context.checkpoints.get(name) for name in checkpoints]
    except (KeyError, LookupError, DataContextError) as exc:
        raise QualityConfigError(
            f"the GX project in {project_dir} lacks an object the suites need ({exc}); "
            "run `mailpipe check --sync-config` after adding or renaming a suite"
        ) from None
    wanted = {s.name for s in specs}
    found = {vd.name for cp in loaded for vd in cp.validation_definitions}
    if found != wanted:
        raise QualityConfigError(
            f"checkpoint(s) {', '.join(checkpoints)} validate {sorted(found)}, not "
            f"{sorted(wanted)}: run `mailpipe check --sync-config`"
        )
    parameters = {
        "max_retries": settings.max_retries,
        "max_retries_failed": settings.max_retries + 1,
    }
    results = []
    for checkpoint in loaded:
        try:
            results.append(
                checkpoint.run(
                    expectation_parameters=parameters, run_id=RunIdentifier(run_name=run_name)
                )
            )
        except Exception as exc:  # GX wraps driver errors in its own types; keep one message
            raise MailpipeError(
                f"the data-quality checkpoint {checkpoint.name} could not run: "
                f"{redact(str(exc), database_url)}. Check DATABASE_URL and that the database "
                "is migrated (mailpipe db migrate)."
            ) from None
    return results


def _suite_results(
    results: Sequence[Any],
    specs: Mapping[str, SuiteSpec],
    since: dt.datetime | None,
    settings: Settings,
    database_url: str,
    pages: Mapping[str, str],
) -> list[SuiteResult]:
    suites: list[SuiteResult] = []
    for vr in (vr for result in results for vr in result.run_results.values()):
        spec = specs[vr.suite_name]
        outcomes = [_expectation_result(spec.name, r, database_url) for r in vr.results]
        # GX returns results grouped by metric, not in suite order: keep a stable order.
        outcomes.sort(key=lambda r: r.invariant)
        suites.append(
            SuiteResult(
                name=spec.name,
                table=spec.table,
                policy=effective_policy(spec, settings),
                window=window_start(since) if since is not None and spec.window else None,
                success=all(r.success for r in outcomes),
                evaluated=len(outcomes),
                results=outcomes,
                docs_url=pages.get(spec.name),
            )
        )
    return suites


def _expectation_result(suite: str, r: Any, database_url: str) -> ExpectationResult:
    config = r.expectation_config
    meta = config.meta or {}
    result = r.result or {}
    errors = _exception_messages(r.exception_info)
    column = config.kwargs.get("column")
    details = result.get("details") or {}
    if "unexpected_rows" in details:  # UnexpectedRowsExpectation: the rows our SQL selected
        count = result.get("observed_value")
        sample = [_jsonable(dict(row)) for row in details["unexpected_rows"][:SAMPLE_ROWS]]
        element_count = None
    else:
        count = result.get("unexpected_count")
        element_count = result.get("element_count")
        indexed = result.get("partial_unexpected_index_list") or []
        sample = [_jsonable(dict(row)) for row in indexed[:SAMPLE_ROWS]]
        if not sample:
            sample = [
                _jsonable(v) for v in (result.get("partial_unexpected_list") or [])[:SAMPLE_ROWS]
            ]
    return ExpectationResult(
        invariant=meta.get("invariant") or f"{suite}.{config.type}",
        description=config.description or config.type,
        expectation_type=config.type,
        column=column,
        success=bool(r.success),
        unexpected_count=count,
        element_count=element_count,
        sample=sample,
        error=redact("; ".join(errors), database_url) if errors else None,
    )


def _exception_messages(info: Mapping[str, Any] | None) -> list[str]:
    """GX reports errors two ways: flat for the expectation, nested per metric."""
    info = info or {}
    if "raised_exception" in info:
        return [str(info.get("exception_message"))] if info["raised_exception"] else []
    return list(
        dict.fromkeys(
            str(v.get("exception_message")).strip().splitlines()[0]
            for v in info.values()
            if isinstance(v, Mapping) and str(v.get("raised_exception")) == "True"
        )
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def redact(text: str, database_url: str) -> str:
    """Never let a password reach a log, an artifact or an error."""
    return _redact(text, [url_password(database_url)])


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


def log_report(
    report: QualityReport, logger: logging.Logger | logging.LoggerAdapter[Any] = log
) -> None:
    """One line per broken invariant (error for ``fail`` suites, warning for ``warn``), then
    a summary: who checked, how long, where the Data Docs are."""
    for suite in report.suites:
        for r in suite.failed:
            level = logging.ERROR if suite.policy == "fail" else logging.WARNING
            logger.log(level, "data quality %s (%s): %s", suite.name, suite.policy, r.summary())
    logger.info(
        "data quality %s: %d suite(s), %s in %.1f s%s; Data Docs: %s",
        report.run_name,
        len(report.suites),
        "all invariants hold"
        if report.success
        else f"{len(report.failures)} failed, {len(report.warnings)} warning(s)",
        report.elapsed_seconds,
        f" ({report.checked_by})" if report.checked_by else "",
        report.docs_url,
    )


# ---------------------------------------------------------------------------- flows


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

    Returns the report and its markdown summary. Does not raise on broken invariants: call
    :func:`enforce_policy` after publishing the artifact and raising alerts. ``on_report``
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


async def publish_quality_artifact(report: QualityReport, *, key: str | None = None) -> None:
    """Publish the report's markdown as a Prefect artifact (``data-quality-<run name>``).

    Call from inside a flow run (Prefect is imported here, lazily).
    """
    from prefect.artifacts import acreate_markdown_artifact

    await acreate_markdown_artifact(
        key=key or f"data-quality-{report.run_name}".replace("_", "-").lower(),
        markdown=report.markdown(),
        description=f"Data-quality checks after {report.run_name}",
    )


async def raise_quality_alerts(db: Database, report: QualityReport) -> list[Any]:
    """Raise a ``data_quality`` alert per ``warn`` suite that failed (and resolve it once the
    suite passes again, or is no longer ``warn``: a ``fail`` suite fails the run instead),
    through the monitoring alert lifecycle (:mod:`mailpipe.alerts`); returns the alert
    transitions."""
    from mailpipe import alerts

    transitions = await alerts.apply_alerts(db, _alert_evaluations(report))
    await alerts.notify(transitions)
    return transitions


def _alert_evaluations(report: QualityReport) -> list[Any]:
    from mailpipe.alerts import Evaluation

    evaluations = []
    for suite in report.suites:
        if suite.success or suite.policy != "warn":
            evaluations.append(Evaluation("data_quality", suite.name, "ok"))
            continue
        failed = suite.failed
        evaluations.append(
            Evaluation(
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
        Evaluation("data_quality", name, "no_data") for name in suite_specs() if name not in checked
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


def prepare(database_url: str | None = None, settings: Settings | None = None) -> float:
    """Import Great Expectations and build the GX context a long-lived process reuses
    (``mailpipe check worker``); returns the seconds it took."""
    t0 = time.perf_counter()
    settings = settings or get_settings()
    if database_url is None:
        from mailpipe.db import database_url as resolve_url

        database_url = resolve_url(settings)
    out_dir = results_dir(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _RUN_LOCK:
        _cached_context(expectations_dir().resolve(), out_dir, database_url)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- maintenance


def sync_config(database_url: str | None = None, project_dir: Path | None = None) -> list[str]:
    """Create what the suite files need in the GX project: the datasource, one query asset
    per suite (its ``meta.mailpipe.query``), validation definitions and checkpoints (one per
    flow named in ``meta.mailpipe.flows``, one per suite, and ``all_tables``).

    For developers after adding or editing a suite; idempotent: writes only what is missing
    or changed. Returns what changed.
    """
    import great_expectations as gx
    from great_expectations.exceptions import DataContextError

    settings = get_settings()
    project_dir = (project_dir or expectations_dir()).resolve()
    _load_specs.cache_clear()
    specs = suite_specs(project_dir)
    if database_url is None:
        from mailpipe.db import database_url as resolve_url

        database_url = resolve_url(settings)
    context = _context(project_dir, results_dir(settings), database_url)
    changed: list[str] = []
    try:
        datasource = context.data_sources.get(DATASOURCE)
    except KeyError:
        datasource = context.data_sources.add_sql(
            name=DATASOURCE, connection_string="${" + ENV_DATABASE_URL + "}"
        )
        changed.append(f"datasource {DATASOURCE}")
    validation_definitions = {}
    for spec in specs.values():
        try:
            asset = datasource.get_asset(spec.name)
        except LookupError:
            asset = datasource.add_query_asset(name=spec.name, query=spec.query)
            changed.append(f"asset {spec.name}")
        if asset.query != spec.query:
            asset.query = spec.query
            context.update_datasource(datasource)
            changed.append(f"asset {spec.name} query")
        try:
            batch_definition = asset.get_batch_definition(BATCH_DEFINITION)
        except KeyError:
            batch_definition = asset.add_batch_definition_whole_table(BATCH_DEFINITION)
            changed.append(f"batch definition {spec.name}")
        suite = context.suites.get(spec.name)
        if suite.id is None or any(e.id is None for e in suite.expectations):
            suite = context.suites.add_or_update(suite)  # hand-added expectations get ids
            changed.append(f"suite {spec.name} ids")
        try:
            vd = context.validation_definitions.get(spec.name)
        except DataContextError:
            vd = context.validation_definitions.add(
                gx.ValidationDefinition(name=spec.name, data=batch_definition, suite=suite)
            )
            changed.append(f"validation definition {spec.name}")
        validation_definitions[spec.name] = vd
    flows = sorted({f for s in specs.values() for f in s.flows})
    wanted = {ALL_TABLES_CHECKPOINT: list(specs)}
    wanted |= {f: [s.name for s in specs.values() if f in s.flows] for f in flows}
    wanted |= {name: [name] for name in specs}  # `mailpipe check --suite NAME`
    for name, suites in wanted.items():
        try:
            existing = context.checkpoints.get(name)
            if [
                vd.name for vd in existing.validation_definitions
            ] == suites and not existing.actions:
                continue
        except DataContextError:
            pass
        context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=name,
                validation_definitions=[validation_definitions[s] for s in suites],
                actions=[],  # run_checks builds Data Docs once for all its checkpoints
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": [ROW_KEY],
                    "partial_unexpected_count": 20,
                },
            )
        )
        changed.append(f"checkpoint {name}")
    return changed


async def check_flow_run(flow_name: str, since: dt.datetime) -> QualityReport:
    """Everything a flow does at its end: check its suites on the rows changed since
    ``since`` (answered by a ``mailpipe check worker`` when one runs, else in this process;
    see :mod:`mailpipe.quality_worker`), publish the artifact, raise ``warn`` alerts, then
    fail the run on a broken ``fail`` invariant (:class:`DataQualityError`). Call from
    inside a flow run."""
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    from mailpipe.db import Database
    from mailpipe.quality_worker import post_run_check

    async with Database(min_size=1, max_size=2) as db:
        report = await post_run_check(db, flow_name, since, flow_run_id=flow_run.id)
        log_report(report, get_run_logger())
        await publish_quality_artifact(report)
        await raise_quality_alerts(db, report)
    enforce_policy(report)
    return report
