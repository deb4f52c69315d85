"""The Great Expectations runner: the only module of mailpipe that imports ``great_expectations``.

Always inside a function: the import takes seconds, and ``mailpipe`` must stay fast to import.
It builds the GX file context on ``expectations/`` (the connection string and the results folder
substituted from a runtime environment, never written to disk nor to ``os.environ``), runs
committed checkpoints with each windowed asset's SQL swapped in memory, turns GX's results into
:mod:`mailpipe.quality.report` objects and builds the Data Docs. Two patches of GX internals,
each applied once per process before a context is built, make that affordable on every run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mailpipe.config import Settings
from mailpipe.errors import MailpipeError
from mailpipe.quality.report import ExpectationResult, SuiteResult
from mailpipe.quality.suites import QualityConfigError, SuiteSpec, effective_policy, window_start
from mailpipe.redaction import redact, url_password
from mailpipe.serialization import to_jsonable

DATASOURCE = "mailpipe"
BATCH_DEFINITION = "all_rows"
ALL_TABLES_CHECKPOINT = "all_tables"
ROW_KEY = "row_key"  # every asset's SQL exposes one: samples name rows, not just values
ENV_DATABASE_URL = "MAILPIPE_GX_DATABASE_URL"
ENV_RESULTS_DIR = "MAILPIPE_QUALITY_RESULTS_DIR"
SAMPLE_ROWS = 5  # unexpected rows or values shown per failed expectation in reports
# COMPLETE is the only format that returns the rows an UnexpectedRowsExpectation found.
RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": [ROW_KEY],
    "partial_unexpected_count": 20,
}


# ---------------------------------------------------------------------------- the context


def build_context(project_dir: Path, out_dir: Path, database_url: str) -> Any:
    """A GX file context on ``project_dir`` with the URL and results folder substituted."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # ~230 INFO lines a run
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from mailpipe.db import CHECKS_SEARCH_PATH, sqlalchemy_url

    share_data_docs_templates()
    probe_query_columns_without_rows()
    built = gx.get_context(
        mode="file",
        context_root_dir=str(project_dir),
        runtime_environment={
            ENV_DATABASE_URL: sqlalchemy_url(database_url, search_path=CHECKS_SEARCH_PATH),
            ENV_RESULTS_DIR: str(out_dir),
        },
    )
    # In memory only (also set in great_expectations.yml): tqdm bars on stderr otherwise.
    built.variables.progress_bars = ProgressBarsConfig(globally=False)
    return built


_warm: dict[str, Any] = {}


def cached_context(project_dir: Path, out_dir: Path, database_url: str) -> Any:
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
        _warm.update(key=key, context=build_context(project_dir, out_dir, database_url))
    return _warm["context"]


# ---------------------------------------------------------------------------- patches of GX


def share_data_docs_templates() -> None:
    """Compile Data Docs templates once per process instead of once per page.

    Why: GX (checked with 1.24) renders every page with a new ``DefaultJinjaView``, whose
    ``__init__`` builds a new jinja ``Environment`` (the name ``Environment`` looked up in
    ``great_expectations.render.view.view``), and so recompiles its templates for each page.
    Replacing that name with an ``Environment`` that shares one in-memory bytecode cache
    removes the cost; jinja checks each template's source checksum before reusing its
    bytecode, so a changed template is still recompiled. Measured (GX 1.24.1, 2 loaded cores):
    the Data Docs update of a 7-suite run takes 0.2 s instead of 0.5 s; once a worker has
    answered, that is still time an inline check (no worker running) spends in the flow run.
    ``tests/test_quality_gx.py`` proves a second run compiles no template, and that it would
    without this patch.
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


def probe_query_columns_without_rows() -> None:
    """Learn a query asset's columns with ``LIMIT 0`` instead of running the whole query.

    Why: to list the columns of a query asset (a ``TextClause``, which has no
    ``selected_columns``) GX (checked with 1.24) calls
    ``great_expectations.expectations.metrics.util.column_reflection_fallback``, which executes
    the SQL as it is and keeps only the column names: every row travels to the client, four
    times for the ``communication_events`` suite. Measured (GX 1.24.1, whole table of 200k
    events): 2.3 s of a 6.9 s check, the check 3.7 s with the patch; it grows with the table
    (bench/quality_overhead.py times 1M rows). Wrapped in ``SELECT * FROM (...) LIMIT 0``
    Postgres returns the same columns and evaluates no row (also for a query that selects
    none). ``tests/test_quality_gx.py`` proves the rows are no
    longer evaluated, and that they would be without this patch.
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
    column_reflection_fallback.__wrapped__ = original  # type: ignore[attr-defined]
    util.column_reflection_fallback = column_reflection_fallback


# ---------------------------------------------------------------------------- running


def run_checkpoints(
    ctx: Any,
    project_dir: Path,
    database_url: str,
    specs: Sequence[SuiteSpec],
    since: dt.datetime | None,
    checkpoints: Sequence[str],
    run_name: str,
    settings: Settings,
) -> list[Any]:
    """Run the committed ``checkpoints`` on ``specs``' rows changed since ``since`` (whole
    tables for None); returns GX's checkpoint results."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.exceptions import DataContextError

    try:
        datasource = ctx.data_sources.get(DATASOURCE)
        for spec in specs:
            # In memory only: nothing below saves the datasource, so the committed SQL stays.
            datasource.get_asset(spec.name).query = spec.batch_query(since)
        loaded = [ctx.checkpoints.get(name) for name in checkpoints]
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
                f"{redact(str(exc), [url_password(database_url)])}. Check DATABASE_URL and that "
                "the database is migrated (mailpipe db migrate)."
            ) from None
    return results


def docs_urls(ctx: Any, results: Sequence[Any]) -> tuple[str | None, dict[str, str]]:
    """The Data Docs index and each suite's page for ``results``: known before the pages
    exist, so the report can go out before they are built."""
    pages: dict[str, str] = {}
    for key, vr in ((k, v) for r in results for k, v in r.run_results.items()):
        urls = ctx.get_docs_sites_urls(resource_identifier=key, only_if_exists=False)
        if urls and urls[0].get("site_url"):
            pages[vr.suite_name] = urls[0]["site_url"]
    index = ctx.get_docs_sites_urls(only_if_exists=False)
    return (index[0]["site_url"] if index else None), pages


def build_data_docs(ctx: Any, results: Sequence[Any]) -> None:
    """This run's pages and one index (rebuilt from every kept result), once per run rather
    than a docs action per checkpoint."""
    ctx.build_data_docs(resource_identifiers=[key for r in results for key in r.run_results])


def suite_results(
    results: Sequence[Any],
    specs: Mapping[str, SuiteSpec],
    since: dt.datetime | None,
    settings: Settings,
    database_url: str,
    pages: Mapping[str, str],
) -> list[SuiteResult]:
    """GX's checkpoint results as one :class:`SuiteResult` per suite."""
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
    details = result.get("details") or {}
    if "unexpected_rows" in details:  # UnexpectedRowsExpectation: the rows our SQL selected
        count = result.get("observed_value")
        sample = [to_jsonable(dict(row)) for row in details["unexpected_rows"][:SAMPLE_ROWS]]
        element_count = None
    else:
        count = result.get("unexpected_count")
        element_count = result.get("element_count")
        indexed = result.get("partial_unexpected_index_list") or []
        sample = [to_jsonable(dict(row)) for row in indexed[:SAMPLE_ROWS]]
        if not sample:
            unexpected = result.get("partial_unexpected_list") or []
            sample = [to_jsonable(v) for v in unexpected[:SAMPLE_ROWS]]
    return ExpectationResult(
        invariant=meta.get("invariant") or f"{suite}.{config.type}",
        description=config.description or config.type,
        expectation_type=config.type,
        column=config.kwargs.get("column"),
        success=bool(r.success),
        unexpected_count=count,
        element_count=element_count,
        sample=sample,
        error=redact("; ".join(errors), [url_password(database_url)]) if errors else None,
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


# ---------------------------------------------------------------------------- GX objects


def find_validation_definition(ctx: Any, name: str) -> Any | None:
    """The saved validation definition ``name``, or None."""
    from great_expectations.exceptions import DataContextError

    try:
        return ctx.validation_definitions.get(name)
    except DataContextError:
        return None


def find_checkpoint(ctx: Any, name: str) -> Any | None:
    """The saved checkpoint ``name``, or None."""
    from great_expectations.exceptions import DataContextError

    try:
        return ctx.checkpoints.get(name)
    except DataContextError:
        return None


def new_validation_definition(name: str, batch_definition: Any, suite: Any) -> Any:
    """An unsaved ``gx.ValidationDefinition``."""
    import great_expectations as gx

    return gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)


def new_checkpoint(name: str, validation_definitions: Sequence[Any]) -> Any:
    """An unsaved ``gx.Checkpoint`` with no actions (a run builds Data Docs once for all its
    checkpoints) and the result format the reports need."""
    import great_expectations as gx

    return gx.Checkpoint(
        name=name,
        validation_definitions=list(validation_definitions),
        actions=[],
        result_format=dict(RESULT_FORMAT),
    )
