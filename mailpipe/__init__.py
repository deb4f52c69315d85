"""mailpipe: a transactional-email pipeline on PostgreSQL.

The domain package: importable without Prefect, Great Expectations or pandas, so the hot path and
its tests stay fast. Flows in ``flows/`` are thin wrappers around what lives here.

The most used entry points are re-exported lazily::

    from mailpipe import Database, enqueue
    async with Database() as db:
        await enqueue(db, "user@example.com", "welcome", {"name": "Ada"})
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Database": "mailpipe.db",
    "enqueue": "mailpipe.queue",
    "drain_queue": "mailpipe.delivery",
    "save_template": "mailpipe.templates",
    "add_suppressions": "mailpipe.suppressions",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    # Lazy: `import mailpipe` stays cheap for the CLI's --help and for worker start-up.
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mailpipe' has no attribute {name!r}")
