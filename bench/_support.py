"""What the benchmarks share: the Postgres server they run on, and a fresh migrated database.

Imported by the bench scripts as ``_support`` (a script's own folder is on ``sys.path``); they
put the repository root on ``sys.path`` first, for ``mailpipe``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailpipe.db import Database, admin_execute, with_database_name
from mailpipe.migrations import migrate
from mailpipe.testing.smtpd import free_port


@contextmanager
def embedded_postgres(data_dir: Path, *, cleanup_mode: str = "stop") -> Iterator[str]:
    """An embedded Postgres with its data in ``data_dir``: its admin URL, and the server cleaned
    up (``cleanup_mode``: "stop" or "delete") at the end."""
    from mailpipe.embedded import get_server

    server = get_server(data_dir, cleanup_mode=cleanup_mode)
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextmanager
def postgres_server(
    url: str | None, data_dir: Path, *, cleanup_mode: str = "stop"
) -> Iterator[str]:
    """The admin URL of the server to run on: ``url`` when given (left as it is at the end),
    else an :func:`embedded_postgres` in ``data_dir``."""
    if url:
        yield url
        return
    with embedded_postgres(data_dir, cleanup_mode=cleanup_mode) as admin:
        yield admin


def create_database(admin: str, name: str) -> str:
    """(Re)create database ``name`` on the server at ``admin``, migrated; returns its URL."""
    admin_execute(
        admin, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"]
    )
    url = with_database_name(admin, name)

    async def go() -> None:
        async with Database(url, min_size=1, max_size=1) as db:
            await migrate(db)

    asyncio.run(go())
    return url


def find_smtp_sink() -> tuple[str | None, dict[str, str] | None]:
    """Postfix's smtp-sink and the environment to run it in: installed (Debian's ``postfix``)
    or unpacked without installing it, with its libraries, under ``.mailpipe/bench/postfix``
    (``apt-get download postfix && dpkg -x postfix_*.deb .mailpipe/bench/postfix``)."""
    installed = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if Path(installed).exists():
        return installed, None
    unpacked = Path(__file__).resolve().parent.parent / ".mailpipe" / "bench" / "postfix" / "usr"
    if (unpacked / "sbin" / "smtp-sink").exists():
        env = {**os.environ, "LD_LIBRARY_PATH": str(unpacked / "lib" / "postfix")}
        return str(unpacked / "sbin" / "smtp-sink"), env
    return None, None


def start_sink() -> tuple[subprocess.Popen[bytes], int, str]:
    """Start an SMTP sink on a free port: Postfix's ``smtp-sink`` (a fast C sink; Debian
    package ``postfix``) when installed, else an aiosmtpd sink in its own process (much
    slower: throughput figures against it measure the sink). Returns (process, port, name)."""
    port = free_port()
    sink, env = find_smtp_sink()
    if sink:
        # smtp-sink refuses to run as root without a user to switch to.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen([sink, *user, f"127.0.0.1:{port}", "1000"], env=env)
        name = "Postfix smtp-sink"
    else:
        print(
            "smtp-sink not found (install Debian's `postfix` package, or unpack it: see "
            "find_smtp_sink in bench/_support.py); falling back to an aiosmtpd sink, which is "
            "slower than the clients it measures",
            file=sys.stderr,
        )
        code = (
            "import asyncio,sys\nfrom aiosmtpd.controller import Controller\n"
            "class H:\n async def handle_DATA(self,s,se,e): return '250 OK'\n"
            f"c=Controller(H(),hostname='127.0.0.1',port={port});c.start()\n"
            "import threading;threading.Event().wait()\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code])
        name = "aiosmtpd sink (separate process)"
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                message = f"the SMTP sink ({name}) did not listen on port {port}"
                raise RuntimeError(message) from None
            time.sleep(0.05)
    return proc, port, name


def start_deliverer(url: str, options: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``mailpipe deliver [options]`` on the database at ``url`` (no Prefect events) and
    return once it says it is ready (listening)."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["DATABASE_URL"] = url
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailpipe", "deliver", *(options or [])],
        cwd=root,
        env=env,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    while b"mailpipe deliver: ready" not in (text := proc.stderr.readline()):
        if not text:
            raise RuntimeError(f"mailpipe deliver exited (status {proc.wait()}) before ready")
    # Keep reading what it logs, so that a full pipe never blocks it.
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc
