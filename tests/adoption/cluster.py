"""A throwaway Debian PostgreSQL cluster with pg_cron loaded, for the adoption tests.

pg_cron must be in ``shared_preload_libraries``, which the embedded (pgserver) Postgres cannot
give: so these tests run initdb + pg_ctl from Debian's ``postgresql-<ver>`` with the matching
``postgresql-<ver>-cron`` (``scripts/install-pg-cron.sh`` installs both).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mailpipe.testing.smtpd import free_port

CRON_DATABASE = "app_cron"


def find_pg_cron_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` whose server has pg_cron installed."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted(
        (p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True
    )
    for version in versions:
        has_server = (version / "bin" / "initdb").is_file() and (
            version / "bin" / "pg_ctl"
        ).is_file()
        if has_server and (version / "lib" / "pg_cron.so").is_file():
            return version / "bin"
    return None


@dataclass
class CronCluster:
    """A running cluster: ``url(dbname)`` connects as its superuser ``postgres``."""

    bindir: Path
    datadir: Path
    port: int
    as_user: list[str]

    def url(self, dbname: str = "postgres") -> str:
        """A connection URL to ``dbname`` over TCP (trust authentication)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def wait_for_scheduler(self, dbname: str, timeout: float = 60.0) -> None:
        """Wait until pg_cron's scheduler is connected to ``dbname``.

        The launcher starts with the server, exits while ``cron.database_name`` does not exist
        yet, and is restarted by the postmaster a moment later: poll for it, bounded.
        """
        import psycopg  # tests only: the package's own code reaches Postgres through mailpipe.db

        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'"
                ).fetchone()
                if row and row[0]:
                    return
                time.sleep(0.1)
        log = (self.datadir.parent / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"pg_cron's scheduler did not start within {timeout:g} s:\n{log}")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=True,
            capture_output=True,
            text=True,
        )


def start_cron_cluster(bindir: Path) -> CronCluster:
    """initdb a cluster in a temporary directory, with pg_cron preloaded, and start it.

    Postgres refuses to run as root, so under root the server runs as the ``postgres`` user
    (created by the Debian package) through ``runuser``; the directory is handed over to it.
    """
    base = Path(tempfile.mkdtemp(prefix="mailpipe-pgcron-", dir="/tmp"))
    datadir, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (base, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = CronCluster(bindir=bindir, datadir=datadir, port=free_port(), as_user=as_user)
    cluster._run(
        "initdb", "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
    )
    settings = {
        "port": str(cluster.port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{sockets}'",
        "shared_preload_libraries": "'pg_cron'",
        "cron.database_name": f"'{CRON_DATABASE}'",
        # Jobs run in background workers: no libpq connection back to a host/port to configure.
        "cron.use_background_workers": "on",
        "max_worker_processes": "16",
        "fsync": "off",
        "synchronous_commit": "off",
    }
    with (datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# mailpipe adoption tests\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    try:
        cluster._run(
            "pg_ctl", "-D", str(datadir), "-l", str(base / "server.log"), "-w", "-t", "60", "start"
        )
    except subprocess.CalledProcessError as exc:
        log = (base / "server.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {exc.stderr}\n{log}") from exc
    return cluster
