"""Burst: 10,000 inserted events drained by ``mailpipe deliver``, against django-post_office.

Run by hand (not a test):  uv run python bench/burst.py [--events 10000] [--repeat 2]
                           [--deliverers 1 2] [--concurrency 1 2] [--batch-size 200 500]
                           [--priority-bulk 50000]  (see --help for the peer's grid)

The issue's shape: Postfix's smtp-sink (a C sink, so the sink is not what is measured), one
Postgres server (embedded, or DATABASE_URL's) with a database per side, a ~1 KB text message.

- django-post_office (the peer): installed from PyPI into a throwaway venv
  (``.mailpipe/bench/peer-venv``, never a project dependency) with Django and psycopg, a
  settings module generated into a temp dir, Django's SMTP backend pointed at the sink. Each
  configuration queues the events with ``mail.send_many`` (bulk_create, as its docs advise),
  then times ``django-admin send_queued_mail --processes P`` (``manage.py``'s command) as a
  whole process (start-up included, as a cron job or a worker runs it), with POST_OFFICE's
  BATCH_SIZE, THREADS_PER_PROCESS (its SMTP connections, each reused for the whole batch)
  and LOG_LEVEL. The three best configurations run ``--repeat`` times in all; its best
  whole-run rate is the reference.
- mailpipe: ``mailpipe deliver`` process(es) already running and idle, as in production; the
  events are inserted by ONE statement; the time runs from that INSERT's commit to the last
  event recorded sent (its ``updated_at``, written after the sink's 250: a conservative proxy
  for the last accept). Each configuration (deliverer processes x ``--concurrency`` x
  ``--batch-size``) runs ``--repeat`` times after one warm-up burst; the best run counts.

Prints each figure, the ratio mailpipe / django-post_office (goal >= 2.0) and the load average.
With ``--priority-bulk N``: N priority-9 events inserted at once, then, while they drain, one
priority-0 event: its insert -> accept latency (goal <= 1 s) and the bulk still unsent then.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _support import create_database, postgres_server, start_deliverer, start_sink  # noqa: E402

from mailpipe.db import Database, admin_execute, with_database_name  # noqa: E402
from mailpipe.templates import save_template  # noqa: E402

# The same ~1 KB text body on both sides (mailpipe renders it from a template).
TEXT = ("Hi {{ name }}, your code is {{ code }}. It expires in 10 minutes.\n" * 15)[:1000]
SUBJECT = "Your code {{ code }}"
SENDER = "Shop <shop@example.com>"
PEER_VENV = ROOT / ".mailpipe" / "bench" / "peer-venv"
PEER_PACKAGES = ["django", "django-post_office", "psycopg[binary]"]

PEER_SETTINGS = """
import os
SECRET_KEY = "mailpipe-bench"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "post_office"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TEMPLATES = [{{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}}]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.postgresql", **{database!r}}}}}
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = {port}
POST_OFFICE = {{
    "BATCH_SIZE": int(os.environ.get("PO_BATCH_SIZE", "100")),
    "THREADS_PER_PROCESS": int(os.environ.get("PO_THREADS", "5")),
    "LOG_LEVEL": int(os.environ.get("PO_LOG_LEVEL", "2")),
}}
"""

# Queues n emails as an application would in bulk: mail.send_many (one bulk_create).
PEER_QUEUE = """
import sys
import django
django.setup()
from django.db import connection
from post_office import mail
n, text = int(sys.argv[1]), sys.argv[2]
with connection.cursor() as cursor:
    cursor.execute("TRUNCATE post_office_email CASCADE")
mail.send_many([
    {{
        "sender": {sender!r},
        "recipients": [f"user{{i}}@example.com"],
        "subject": f"Your code {{i:06d}}",
        "message": text.replace("{{{{ name }}}}", f"user {{i}}")
                       .replace("{{{{ code }}}}", f"{{i:06d}}"),
    }}
    for i in range(n)
])
"""

INSERT_MANY = (
    "INSERT INTO communication_events (event_type, recipient_email, template_key, priority,"
    " payload) SELECT 'code', %(tag)s || g || '@example.com', 'code', %(priority)s,"
    " jsonb_build_object('name', 'user ' || g, 'code', lpad(g::text, 6, '0'))"
    " FROM generate_series(1, %(n)s) g"
)
# Both partial indexes (due, lease) cover this: cheap to poll while a burst drains.
UNFINISHED = "SELECT count(*) FROM communication_events WHERE status IN ('queued', 'processing')"


def load() -> str:
    """The load average now, as "1/5/15 min"."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# -- django-post_office ------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerConfig:
    """One django-post_office configuration."""

    processes: int
    batch_size: int
    threads: int
    log_level: int

    def __str__(self) -> str:
        return (
            f"--processes {self.processes}, BATCH_SIZE {self.batch_size}, "
            f"THREADS_PER_PROCESS {self.threads}, LOG_LEVEL {self.log_level}"
        )


def peer_python() -> Path | None:
    """The throwaway venv's python with django-post_office installed (None: cannot)."""
    python = PEER_VENV / "bin" / "python"
    # post_office cannot be imported without Django settings: find it, do not import it.
    probe = [str(python), "-c", "import django, psycopg, importlib.util as u; "
             "assert u.find_spec('post_office')"]  # fmt: skip
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    uv = shutil.which("uv")
    if uv is None:
        print("django-post_office: `uv` not found to build its throwaway venv; skipped")
        return None
    print(f"django-post_office: installing {', '.join(PEER_PACKAGES)} into {PEER_VENV}")
    try:
        venv = [uv, "venv", "-q", "--clear", "--python", "3.11", str(PEER_VENV)]
        subprocess.run(venv, check=True)
        subprocess.run(
            [uv, "pip", "install", "-q", "--python", str(python), *PEER_PACKAGES], check=True
        )
    except subprocess.CalledProcessError as exc:
        print(f"django-post_office: could not install it ({exc}); skipped")
        return None
    return python


class Peer:
    """django-post_office in its own venv and database, sending to the sink."""

    def __init__(self, python: Path, admin: str, port: int, folder: Path) -> None:
        from psycopg.conninfo import conninfo_to_dict

        admin_execute(
            admin, ["DROP DATABASE IF EXISTS burst_post_office WITH (FORCE)",
                    "CREATE DATABASE burst_post_office"]
        )  # fmt: skip
        info = conninfo_to_dict(with_database_name(admin, "burst_post_office"))
        database = {
            "NAME": info["dbname"],
            "USER": info.get("user", ""),
            "PASSWORD": info.get("password", ""),
            "HOST": info.get("host", ""),
            "PORT": str(info.get("port", "")),
        }
        self.python = python
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "peer_settings.py").write_text(PEER_SETTINGS.format(database=database, port=port))
        (folder / "peer_queue.py").write_text(PEER_QUEUE.format(sender=SENDER))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))},
            "DJANGO_SETTINGS_MODULE": "peer_settings",
            "PYTHONPATH": str(folder),
        }
        self.admin = admin
        self._django("migrate", "-v", "0")

    def _django(self, *args: str, env: dict[str, str] | None = None) -> None:
        done = subprocess.run(
            [str(self.python), "-m", "django", *args],
            cwd=self.folder,
            env=env or self.env,
            capture_output=True,  # its INFO lines per batch; shown when it fails
            text=True,
        )
        if done.returncode:
            print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
            raise RuntimeError(f"django {' '.join(args)} exited {done.returncode}")

    def run(self, config: PeerConfig, n: int) -> float:
        """Queue ``n`` emails, time one whole ``send_queued_mail`` process; its msg/s."""
        subprocess.run(
            [str(self.python), "peer_queue.py", str(n), TEXT],
            cwd=self.folder,
            env=self.env,
            check=True,
        )
        env = {
            **self.env,
            "PO_BATCH_SIZE": str(config.batch_size),
            "PO_THREADS": str(config.threads),
            "PO_LOG_LEVEL": str(config.log_level),
        }
        lock = str(self.folder / "send_queued_mail")
        started = time.perf_counter()
        self._django(
            "send_queued_mail", "--processes", str(config.processes), "--lockfile", lock, env=env
        )
        elapsed = time.perf_counter() - started
        sent = asyncio.run(self._sent())
        if sent != n:
            raise RuntimeError(f"django-post_office sent {sent} of {n} ({config})")
        return n / elapsed

    async def _sent(self) -> int:
        url = with_database_name(self.admin, "burst_post_office")
        async with Database(url, min_size=1, max_size=1) as db:
            # post_office's STATUS: sent = 0
            return int(
                await db.fetch_value("SELECT count(*) FROM post_office_email WHERE status = 0")
            )


# -- mailpipe ----------------------------------------------------------------------------------


async def setup(url: str, port: int, connections: int) -> None:
    async with Database(url, min_size=1, max_size=1) as db:
        await db.execute(
            "INSERT INTO smtp_provider_configs (provider_name, host, port, priority, tls_mode,"
            " from_address, timeout_seconds, max_connections)"
            " VALUES ('sink', '127.0.0.1', %s, 1, 'none', %s, 30, %s)",
            (port, SENDER, connections),
        )
        await save_template(db, "code", subject=SUBJECT, text_body=TEXT, html_body=None)


@dataclass(frozen=True)
class Burst:
    """One burst's figures (seconds from the INSERT's commit)."""

    n: int
    insert_seconds: float  # the INSERT statement itself (10,000 rows, the notify trigger)
    last_accept: float  # the last sent_at (the drainer's clock at the sink's 250)
    last_recorded: float  # the last sent row's updated_at (its outcome committed)
    deliverer_cpu: float  # CPU-seconds the deliverer processes used

    @property
    def rate(self) -> float:
        """msg/s, insert commit -> last recorded (the conservative figure)."""
        return self.n / self.last_recorded


async def burst(db: Database, n: int, tag: str, pids: list[int], priority: int = 5) -> Burst:
    """Insert ``n`` events in one statement and wait until every one is finished."""
    await db.execute("TRUNCATE communication_events CASCADE")
    cpu = sum(cpu_seconds(p) for p in pids)
    started = time.time()
    await db.execute(INSERT_MANY, {"tag": tag, "priority": priority, "n": n})
    committed = time.time()
    deadline = time.monotonic() + 600
    # The figure comes from the rows' own timestamps, so this poll's pace does not change it.
    while await db.fetch_value(UNFINISHED):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tag}: not drained after 600 s")
        await asyncio.sleep(0.2)
    cpu = sum(cpu_seconds(p) for p in pids) - cpu
    row = await db.fetch_one(
        "SELECT count(*) FILTER (WHERE status = 'sent') AS sent,"
        " extract(epoch FROM max(sent_at))::float8 AS accepted,"
        " extract(epoch FROM max(updated_at))::float8 AS recorded,"
        " (SELECT count(*) FROM smtp_delivery_confirmations) AS confirmations"
        " FROM communication_events"
    )
    assert row is not None
    if row["sent"] != n or row["confirmations"] != n:
        raise RuntimeError(f"{tag}: {row['sent']} sent, {row['confirmations']} confirmed of {n}")
    return Burst(
        n, committed - started, row["accepted"] - committed, row["recorded"] - committed, cpu
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def priority_check(db: Database, bulk: int) -> None:
    """One priority-0 event inserted while ``bulk`` priority-9 events drain."""
    print(f"Priority 0 during a burst of {bulk} priority-9 (bulk) events")
    await db.execute("TRUNCATE communication_events CASCADE")
    await db.execute(INSERT_MANY, {"tag": "bulk-", "priority": 9, "n": bulk})
    while not await db.fetch_value(
        "SELECT count(*) FROM communication_events WHERE status = 'sent'"
    ):
        await asyncio.sleep(0.05)  # the bulk burst is being sent
    await asyncio.sleep(0.5)
    await db.execute(INSERT_MANY, {"tag": "urgent-", "priority": 0, "n": 1})
    while await db.fetch_value(UNFINISHED):
        await asyncio.sleep(0.5)
    row = await db.fetch_one(
        "SELECT extract(epoch FROM u.sent_at - u.created_at)::float8 AS latency,"
        " (SELECT count(*) FROM communication_events b WHERE b.recipient_email LIKE 'bulk-%%'"
        "   AND b.sent_at > u.sent_at) AS waiting"
        " FROM communication_events u WHERE u.recipient_email LIKE 'urgent-%%'"
    )
    assert row is not None
    print(
        f"  priority-0 insert -> accept: {row['latency'] * 1000:.0f} ms (goal <= 1000 ms); "
        f"{row['waiting']} of {bulk} bulk events were still unsent then   [load {load()}]"
    )


async def mailpipe_configuration(
    url: str, n: int, deliverers: int, concurrency: int, batch: int, args: argparse.Namespace
) -> list[Burst]:
    options = ["--batch-size", str(batch), "--concurrency", str(concurrency)]
    procs = [start_deliverer(url, options) for _ in range(deliverers)]
    try:
        async with Database(url, min_size=1, max_size=2) as db:
            pids = [p.pid for p in procs]
            await burst(db, min(n, 2000), "warm-", pids)  # connections opened, caches filled
            runs = [await burst(db, n, f"b{i}-", pids) for i in range(args.repeat)]
            if args.priority_bulk and (deliverers, concurrency, batch) == args.priority_config:
                await priority_check(db, args.priority_bulk)
            return runs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=2, help="measured runs per configuration")
    parser.add_argument("--deliverers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=[200, 500], help="the bulk lane's batches"
    )
    parser.add_argument("--connections", type=int, default=4, help="the provider's per drainer")
    parser.add_argument("--peer-processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--peer-batch-sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--peer-threads", type=int, nargs="+", default=[5])
    parser.add_argument("--peer-log-levels", type=int, nargs="+", default=[2, 0])
    parser.add_argument("--no-peer", action="store_true", help="mailpipe only (no ratio)")
    parser.add_argument(
        "--priority-bulk", type=int, default=0, help="run the priority check with N bulk events"
    )
    parser.add_argument(
        "--priority-config",
        type=int,
        nargs=2,
        default=None,
        metavar=("DELIVERERS", "CONCURRENCY"),
        help="the configuration to run the priority check in, with the last --batch-size "
        "(default: the last one)",
    )
    args = parser.parse_args()
    if args.priority_config is None:
        args.priority_config = (args.deliverers[-1], args.concurrency[-1])
    args.priority_config = (*args.priority_config, args.batch_size[-1])

    tmp = Path(tempfile.mkdtemp(prefix="mailpipe-burst-"))
    sink, port, sink_name = start_sink()
    try:
        with postgres_server(os.environ.get("DATABASE_URL"), tmp / "pg") as admin:
            print(f"sink: {sink_name}; {args.events} events; {os.cpu_count()} cores; load {load()}")
            peer_best = run_peer(admin, port, tmp / "peer", args)
            url = create_database(admin, "mailpipe_burst")
            asyncio.run(setup(url, port, args.connections))
            best = run_mailpipe(url, args)
            print(f"load average at the end: {load()}")
            if peer_best:
                print(
                    f"ratio mailpipe best / django-post_office best: "
                    f"{best / peer_best:.2f}x (goal >= 2.0)"
                )
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def run_peer(admin: str, port: int, folder: Path, args: argparse.Namespace) -> float | None:
    """Every peer configuration once; returns the best whole-run rate (None: no peer)."""
    python = None if args.no_peer else peer_python()
    if python is None:
        return None
    peer = Peer(python, admin, port, folder)
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, django;"
         "print(m.version('django-post_office'), django.get_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    print(f"django-post_office {version[0]} (Django {version[1]}), send_queued_mail whole runs:")
    results = []
    for processes, batch, threads, level in itertools.product(
        args.peer_processes, args.peer_batch_sizes, args.peer_threads, args.peer_log_levels
    ):
        config = PeerConfig(processes, batch, threads, level)
        rate = peer.run(config, args.events)
        results.append((rate, config))
        print(f"  {rate:7.0f} msg/s  {config}   [load {load()}]")
    # The best few configurations again (--repeat runs in all), as mailpipe's are repeated.
    leaders = [c for _, c in sorted(results, key=lambda r: r[0], reverse=True)[:3]]
    for config in leaders * (args.repeat - 1):
        rate = peer.run(config, args.events)
        results.append((rate, config))
        print(f"  {rate:7.0f} msg/s  {config} (again)   [load {load()}]")
    rate, config = max(results, key=lambda r: r[0])
    print(f"  best: {rate:.0f} msg/s ({config})")
    return rate


def run_mailpipe(url: str, args: argparse.Namespace) -> float:
    """Every deliverer configuration; returns the best rate (commit -> last recorded)."""
    print(
        f"mailpipe deliver (idle, listening), one INSERT of {args.events} events; "
        f"{args.connections} SMTP connections per drainer:"
    )
    best = 0.0
    for deliverers, concurrency, batch in itertools.product(
        args.deliverers, args.concurrency, args.batch_size
    ):
        runs = asyncio.run(
            mailpipe_configuration(url, args.events, deliverers, concurrency, batch, args)
        )
        for b in runs:
            print(
                f"  {b.rate:7.0f} msg/s  {deliverers} deliverer(s) x --concurrency {concurrency}"
                f" --batch-size {batch}:"
                f" commit -> last accept {b.last_accept:.2f} s, -> last recorded"
                f" {b.last_recorded:.2f} s (INSERT {b.insert_seconds * 1000:.0f} ms;"
                f" deliverers {b.deliverer_cpu:.1f} CPU-s)   [load {load()}]"
            )
        best = max(best, *(b.rate for b in runs))
    print(f"  best: {best:.0f} msg/s")
    return best


if __name__ == "__main__":
    main()
