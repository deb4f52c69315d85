"""The embedded Postgres (the ``pgserver`` wheel): started on demand, reused across commands."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from mailpipe.errors import ConfigError

log = logging.getLogger(__name__)


def ensure_embedded_postgres(pgdata: Path) -> str:
    """Start (or reuse) the embedded Postgres in ``pgdata`` and return its connection URL.

    The server keeps running after this process exits, so the next command connects at once;
    ``mailpipe db stop`` stops it. It listens on a Unix socket only: nothing is exposed.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ConfigError(
            "DATABASE_URL is not set and the embedded Postgres (pgserver) is not installed: "
            "set DATABASE_URL or install mailpipe with its dependencies."
        ) from exc
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.debug("starting embedded Postgres in %s", pgdata)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:
        raise ConfigError(
            f"could not start the embedded Postgres in {pgdata}: {exc}. "
            "Check the folder is writable, or set DATABASE_URL to use another Postgres."
        ) from exc
    return server.get_uri()


def stop_embedded_postgres(pgdata: Path) -> bool:
    """Stop the embedded Postgres in ``pgdata`` if it runs; True when one was stopped."""
    import pgserver

    pgdata = pgdata.expanduser().resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    server.cleanup()
    return True
