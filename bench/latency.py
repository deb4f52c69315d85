"""Latency: enqueue -> SMTP accept with ``mailpipe deliver``, against the minute-cron path.

Run by hand (not a test):  uv run python bench/latency.py [--heavy] [--deliverers N]
                           [--idle-seconds 60]

Two databases on one Postgres, one sink, the same ~1 KB text message:
  deliverer: ``mailpipe deliver`` process(es) listening; events arrive, each is timed from its
             row's created_at (the inserting transaction) to the sink's 250 reply;
  cron path: the same arrivals with nobody listening, then one ``drain_queue`` call (the
             engine as process_email_queue runs it, without Prefect's start-up, and without
             the wait for the next minute's tick: 0-60 s more in production).
Scenarios: steady Poisson arrivals at 20, 100 and 500 msg/s (5 s each; 30 s with --heavy), a
burst of 10,000 events inserted by one statement (insert -> last accept), and one priority-0
event inserted while a bulk burst of 10,000 (50,000 with --heavy) priority-9 events drains.
With --idle-seconds, the CPU time of an idle deliverer over that time and of one idle
``mailpipe run process_email_queue`` (the sweeper, when it finds nothing).

The sink is Postfix's smtp-sink when installed only for the throughput of (b) in
queue_throughput.py; here the sink must time each message, so it is an aiosmtpd sink in its
own process that writes "Message-ID accept-time" lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _support import create_database, postgres_server, start_deliverer  # noqa: E402

from mailpipe.db import Database, Jsonb, with_database_name  # noqa: E402
from mailpipe.delivery import drain_queue  # noqa: E402
from mailpipe.templates import save_template  # noqa: E402
from mailpipe.testing.smtpd import free_port  # noqa: E402

TEXT = ("Hi {{ name }}, your code is {{ code }}. It expires in 10 minutes.\n" * 14)[:1000]

SINK = r"""
import re, sys, threading, time
from aiosmtpd.controller import Controller
out = open(sys.argv[2], "a")
lock = threading.Lock()
pattern = re.compile(rb"^Message-ID:\s*<?([^>\r\n]+)>?", re.I | re.M)
class Handler:
    async def handle_DATA(self, server, session, envelope):
        found = pattern.search(envelope.content[:8192])
        with lock:
            out.write(f"{found.group(1).decode() if found else '-'} {time.time():.6f}\n")
        return "250 OK"
def flush():
    while True:
        time.sleep(0.05)
        with lock:
            out.flush()
threading.Thread(target=flush, daemon=True).start()
Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1])).start()
print("ready", flush=True)
threading.Event().wait()
"""


class Sink:
    """The timing sink in its own process; :meth:`accepted` reads its log."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.log = folder / "sink.log"
        self.log.touch()
        self.process = subprocess.Popen(
            [sys.executable, "-c", SINK, str(self.port), str(self.log)], stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == b"ready"

    def accepted(self) -> dict[str, float]:
        """Message-ID -> accept time (the first, should one come twice)."""
        times: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            mid, _, at = line.rpartition(" ")
            times.setdefault(mid.strip("<>"), float(at))
        return times

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


async def setup(url: str, port: int) -> None:
    async with Database(url, min_size=1, max_size=1) as db:
        await db.execute(
            "INSERT INTO smtp_provider_configs (provider_name, host, port, priority, tls_mode,"
            " from_address, timeout_seconds, max_connections)"
            " VALUES ('sink', '127.0.0.1', %s, 1, 'none', 'Shop <shop@example.com>', 30, 4)",
            (port,),
        )
        await save_template(
            db, "code", subject="Your code {{ code }}", text_body=TEXT, html_body=None
        )


INSERT_ONE = (
    "INSERT INTO communication_events (event_type, recipient_email, template_key, priority,"
    " payload) VALUES ('code', %s, 'code', %s, %s)"
)
INSERT_MANY = (
    "INSERT INTO communication_events (event_type, recipient_email, template_key, priority,"
    " payload) SELECT 'code', %(tag)s || g || '@example.com', 'code', %(priority)s, %(payload)s"
    " FROM generate_series(1, %(n)s) g"
)


def payload(i: int) -> Jsonb:
    return Jsonb({"name": f"user {i}", "code": f"{i:06d}"})


async def poisson(db: Database, tag: str, rate: float, seconds: float, seed: int) -> int:
    """Insert single-row events (as an app does) at Poisson arrivals; returns how many."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[int]] = []
    start = time.perf_counter()
    at = start
    while True:
        at += rng.expovariate(rate)
        if at > start + seconds:
            break
        if (delay := at - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        i = len(tasks)
        tasks.append(
            asyncio.create_task(db.execute(INSERT_ONE, (f"{tag}{i}@example.com", 5, payload(i))))
        )
    await asyncio.gather(*tasks)
    return len(tasks)


async def wait_sent(db: Database, tag: str, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        sent = await db.fetch_value(
            "SELECT count(*) FROM communication_events WHERE status = 'sent'"
            " AND recipient_email LIKE %s",
            (f"{tag}%",),
        )
        if sent >= n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tag}: {sent} of {n} sent after {timeout} s")
        await asyncio.sleep(0.05)


async def latencies(db: Database, sink: Sink, tag: str, n: int) -> list[float]:
    """Enqueue (created_at) -> accept (the sink's clock) per event of ``tag``, in seconds."""
    rows = await db.fetch_all(
        "SELECT message_id, extract(epoch FROM created_at)::float8 AS at"
        " FROM communication_events WHERE recipient_email LIKE %s",
        (f"{tag}%",),
    )
    deadline = time.monotonic() + 10
    while True:  # the sink flushes its log every 50 ms
        accepted = sink.accepted()
        if all(r["message_id"].strip("<>") in accepted for r in rows):
            break
        assert time.monotonic() < deadline, f"{tag}: the sink did not log every message"
        await asyncio.sleep(0.05)
    assert len(rows) == n
    return [accepted[r["message_id"].strip("<>")] - r["at"] for r in rows]


def figures(lat: list[float]) -> dict[str, float]:
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": max(lat)}


def line(name: str, lat: list[float], seconds: float) -> dict[str, float]:
    f = figures(lat)
    rate = len(lat) / seconds if seconds else 0.0
    print(
        f"  {name:<10} n={len(lat):6d}  p50 {f['p50'] * 1000:8.1f} ms  p95 {f['p95'] * 1000:8.1f}"
        f" ms  p99 {f['p99'] * 1000:8.1f} ms  max {f['max'] * 1000:8.1f} ms  {rate:7.0f} msg/s"
    )
    return {**f, "rate": rate}


async def steady(live: Database, cron: Database, sink: Sink, rate: float, seconds: float) -> None:
    print(f"Poisson arrivals, {rate:.0f} msg/s for {seconds:.0f} s")
    tag = f"p{rate:.0f}-"
    n = await poisson(live, tag, rate, seconds, seed=int(rate))
    await wait_sent(live, tag, n)
    d = line("deliverer", await latencies(live, sink, tag, n), seconds)
    n = await poisson(cron, tag, rate, seconds, seed=int(rate))
    await drain_queue(cron, batch_size=200, time_budget=600)
    c = line("cron path", await latencies(cron, sink, tag, n), seconds)
    print(f"  p95 ratio cron/deliverer: {c['p95'] / d['p95']:.1f}x")


async def burst(live: Database, cron: Database, sink: Sink, n: int) -> None:
    print(f"Burst: {n} events inserted by one statement (insert -> last accept)")
    results = {}
    for name, db in (("deliverer", live), ("cron path", cron)):
        tag = f"b{n}-"
        started = time.time()
        await db.execute(INSERT_MANY, {"tag": tag, "priority": 5, "payload": payload(0), "n": n})
        if db is cron:
            await drain_queue(cron, batch_size=200, time_budget=600)
        await wait_sent(db, tag, n)
        lat = await latencies(db, sink, tag, n)
        last = max(sink.accepted()[r] for r in await message_ids(db, tag))
        results[name] = line(name, lat, last - started)
    ratio = results["deliverer"]["rate"] / results["cron path"]["rate"]
    print(f"  throughput ratio deliverer/cron: {ratio:.2f}x")


async def message_ids(db: Database, tag: str) -> list[str]:
    rows = await db.fetch_all(
        "SELECT message_id FROM communication_events WHERE recipient_email LIKE %s", (f"{tag}%",)
    )
    return [r["message_id"].strip("<>") for r in rows]


async def priority_in_burst(live: Database, sink: Sink, n: int) -> None:
    print(f"Priority 0 during a burst of {n} priority-9 events")
    await live.execute(INSERT_MANY, {"tag": "bulk-", "priority": 9, "payload": payload(0), "n": n})
    await asyncio.sleep(0.5)  # the burst is being sent
    await live.execute(INSERT_ONE, ("urgent-1@example.com", 0, payload(1)))
    await wait_sent(live, "urgent-", 1)
    [lat] = await latencies(live, sink, "urgent-", 1)
    waiting = await live.fetch_value(
        "SELECT count(*) FROM communication_events WHERE status <> 'sent'"
        " AND recipient_email LIKE 'bulk-%%'"
    )
    print(f"  priority-0 latency {lat * 1000:.1f} ms; {waiting} bulk events not yet sent then")
    await wait_sent(live, "bulk-", n, timeout=900)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(
    deliverers: list[subprocess.Popen[bytes]], url: str, seconds: float, data: Path
) -> None:
    print(f"Idle CPU over {seconds:.0f} s")
    before = [cpu_seconds(p.pid) for p in deliverers]
    time.sleep(seconds)
    used = sum(cpu_seconds(p.pid) for p in deliverers) - sum(before)
    print(f"  deliverer(s): {used:.3f} CPU-s ({used / seconds * 3600:.1f} CPU-s per idle hour)")
    # The sweeper finding nothing, as `mailpipe run` runs it: its own kept local Prefect
    # server (started by the first run, not measured), then one measured run: the flow-run
    # process and what the server spent on it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(DATABASE_URL=url, MAILPIPE_DATA_DIR=str(data))
    command = [sys.executable, "-m", "mailpipe", "run", "process_email_queue"]
    try:
        subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True)
        server = json.loads((data / "prefect" / "local" / "server.json").read_text())["pid"]
        server_before = cpu_seconds(server)
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        server_cpu = cpu_seconds(server) - server_before
    finally:
        stop = [sys.executable, "-m", "mailpipe", "server", "stop"]
        subprocess.run(stop, cwd=ROOT, env=env, capture_output=True)
    cpu = usage.ru_utime + usage.ru_stime
    print(
        f"  one idle `mailpipe run process_email_queue`: {cpu:.2f} CPU-s in its process "
        f"+ {server_cpu:.2f} CPU-s in the Prefect server, {wall:.1f} s wall "
        f"(exit {os.waitstatus_to_exitcode(status)}); every minute: "
        f"{(cpu + server_cpu) * 60:.0f} CPU-s per hour"
    )
    probe = (
        "import time; t = time.process_time(); import mailpipe.cli, flows.process_email_queue;"
        " print(round(time.process_time() - t, 2))"
    )
    imports = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    print(f"  of which importing mailpipe's CLI and the flow: {imports.stdout.strip()} CPU-s")


async def scenarios(live_url: str, cron_url: str, sink: Sink, args: argparse.Namespace) -> None:
    seconds = 30.0 if args.heavy else args.seconds
    async with (
        Database(live_url, min_size=4, max_size=8) as live,
        Database(cron_url, min_size=4, max_size=8) as cron,
    ):
        for rate in args.rates:
            await steady(live, cron, sink, rate, seconds)
        await burst(live, cron, sink, args.burst)
        await priority_in_burst(live, sink, 50000 if args.heavy else args.burst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[20, 100, 500])
    parser.add_argument("--seconds", type=float, default=5.0, help="each steady run")
    parser.add_argument("--burst", type=int, default=10000)
    parser.add_argument("--deliverers", type=int, default=1, help="mailpipe deliver processes")
    parser.add_argument("--heavy", action="store_true", help="30 s runs, a 50k bulk burst")
    parser.add_argument("--idle-seconds", type=float, default=0, help="measure idle CPU")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mailpipe-latency-"))
    deliverers: list[subprocess.Popen[bytes]] = []
    sink = Sink(tmp)
    try:
        with postgres_server(os.environ.get("DATABASE_URL"), tmp / "pg") as admin:
            live = create_database(admin, "mailpipe_latency")
            cron = create_database(admin, "mailpipe_latency_cron")
            assert with_database_name(admin, "mailpipe_latency") == live
            for url in (live, cron):
                asyncio.run(setup(url, sink.port))
            deliverers = [
                start_deliverer(live, ["--batch-size", "200"]) for _ in range(args.deliverers)
            ]
            print(
                f"sink: aiosmtpd (own process); {args.deliverers} deliverer process(es); "
                f"{os.cpu_count()} cores; provider max 4 connections"
            )
            if args.idle_seconds:
                idle_cpu(deliverers, cron, args.idle_seconds, tmp / "data")
            asyncio.run(scenarios(live, cron, sink, args))
    finally:
        for proc in deliverers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        sink.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
