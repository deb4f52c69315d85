"""The two patches of Great Expectations internals still take effect with the pinned GX.

Each test runs a real checkpoint twice: patched (as every run is) and with the patch undone,
and observes the difference the patch exists for, so a GX upgrade that moves the patched name
(the patch would silently do nothing) or fixes the cost itself (the patch could go) fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mailpipe import quality
from mailpipe.quality import gx
from mailpipe.quality.suites import suite_specs

SUITE = "smtp_provider_configs"  # small, whole table: the cheapest checkpoint


def check(database_url: str) -> None:
    report = quality.run_checks([SUITE], None, database_url)
    assert report.success, report.markdown()


@contextmanager
def compiled_templates() -> Iterator[list[str]]:
    """The names of the jinja templates compiled (from source) while the block runs."""
    import jinja2

    names: list[str] = []
    original = jinja2.Environment.compile

    def compile(self: jinja2.Environment, source: Any, name: str | None = None, *a: Any, **k: Any):
        names.append(str(name))
        return original(self, source, name, *a, **k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jinja2.Environment, "compile", compile)
        yield names


@contextmanager
def executed_sql() -> Iterator[list[str]]:
    """Every SQL statement SQLAlchemy (so GX) sends while the block runs."""
    import sqlalchemy as sa

    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def test_data_docs_templates_are_compiled_once_per_process(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jinja2
    from great_expectations.render.view import view

    check(database_url)  # the first run in this process compiles (and caches) the templates
    assert issubclass(view.Environment, jinja2.Environment)
    assert view.Environment is not jinja2.Environment  # the patch is in place

    with compiled_templates() as patched:
        check(database_url)
    # Undone: GX's own Environment again (the marker keeps the patch from coming back).
    monkeypatch.setattr(view, "Environment", jinja2.Environment)
    with compiled_templates() as unpatched:
        check(database_url)

    assert patched == []  # every Data Docs page reused the shared bytecode
    assert len(unpatched) >= 10, unpatched  # GX recompiles its templates for each page


def test_query_asset_columns_are_probed_without_reading_rows(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from great_expectations.expectations.metrics import util

    query = suite_specs()[SUITE].query
    bare = re.sub(r"\s+", " ", query)

    def sent_bare(statements: list[str]) -> bool:
        # The asset's SQL executed as it is: every row travels, only the column names are kept.
        return any(re.sub(r"\s+", " ", s).strip() == bare for s in statements)

    with executed_sql() as patched:
        check(database_url)
    assert getattr(util.column_reflection_fallback, "_mailpipe_limit_0", False)
    probes = [s for s in patched if "AS columns_probe LIMIT 0" in s]
    assert probes and all(query in s for s in probes)  # GX asked for the columns: no rows
    assert not sent_bare(patched)

    # Undone (and kept from coming back by the next context): GX runs the whole query.
    monkeypatch.setattr(
        util, "column_reflection_fallback", util.column_reflection_fallback.__wrapped__
    )
    monkeypatch.setattr(gx, "probe_query_columns_without_rows", lambda: None)
    with executed_sql() as unpatched:
        check(database_url)
    assert sent_bare(unpatched)
    assert not any("columns_probe" in s for s in unpatched)


def test_the_column_probe_gives_the_columns_of_a_query_without_rows(database_url: str) -> None:
    # Same answer as GX's own: a windowed asset often selects no row at all.
    import sqlalchemy as sa
    from great_expectations.execution_engine import SqlAlchemyExecutionEngine
    from great_expectations.expectations.metrics import util

    from mailpipe.db import sqlalchemy_url

    gx.probe_query_columns_without_rows()
    engine = SqlAlchemyExecutionEngine(connection_string=sqlalchemy_url(database_url))
    empty = sa.text("SELECT id AS row_key, provider_name FROM smtp_provider_configs WHERE false")
    # Each row of this one raises when evaluated: only a probe that reads no row survives.
    poison = sa.text("SELECT n AS row_key, 1 / (n - n) AS boom FROM generate_series(1, 3) AS n")

    def columns(selectable: Any) -> list[str]:
        found = util.get_sqlalchemy_column_metadata(
            execution_engine=engine, table_selectable=selectable
        )
        return [c["name"] for c in found or []]

    try:
        assert columns(empty) == ["row_key", "provider_name"]
        assert columns(poison) == ["row_key", "boom"]
    finally:
        engine.engine.dispose()
