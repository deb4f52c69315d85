"""Named SQL: every runtime query lives in ``sql/queries/*.sql``, loaded once by name.

A query starts with a line ``-- name --`` followed by a one-line ``-- description`` and runs until
the next name line (the procrastinate convention). Python refers to queries by name, so SQL is
read and reviewed as SQL.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

_NAME = re.compile(r"^-- ([a-z_][a-z0-9_]*) --\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The ``sql/`` folder: inside the installed wheel, or at the checkout's root."""
    packaged = Path(__file__).parent / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def parse_queries(text: str, *, origin: str = "<string>") -> dict[str, str]:
    """Split a query file into ``{name: sql}``."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {origin}")
        queries[name] = body.strip()
    return queries


@lru_cache(maxsize=1)
def _all_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        for name, sql in parse_queries(path.read_text(encoding="utf-8"), origin=str(path)).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined in two files (second: {path.name})")
            queries[name] = sql
    return queries


def query(name: str) -> str:
    """The SQL text of the named query; KeyError names the missing query."""
    try:
        return _all_queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {sql_dir() / 'queries'}") from None
