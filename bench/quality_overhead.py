"""Data-quality overhead: the post-run check against a process_email_queue run, and on 1M rows.

Run by hand (not a test):

    uv run python bench/quality_overhead.py                    # 20k-event drain, 1M-row tables
    uv run python bench/quality_overhead.py --rows 200000      # quicker

Part 1 runs what a process_email_queue flow run does, each in a fresh Python process (a
deployment starts one per run): drain N queued events (mailpipe.delivery.drain_queue, to an
SMTP sink), then the flow's checkpoint windowed to the run. Three modes, interleaved: drain
only (the baseline); the check in the same process (what a flow run does when no worker runs:
Great Expectations imported at its end); and the check answered by a warm `mailpipe check
worker` (started once, beside the runs, as `mailpipe serve`/`up` do). Both with this box's
setting (PYTHONDONTWRITEBYTECODE: no .pyc, GX recompiled at every import) and with compiled
bytecode, as a deployment should have. Target: the run takes <= 15% longer.

Part 2 loads ROWS events, confirmations, probes and a tenth as many attempts (one day of
traffic, generated set-based like bench/snapshot_scaling.py), then times, after GX is
imported: every suite on the whole tables, and the process_email_queue checkpoint windowed
to the newest N events (what one run at that scale checks). Each figure is the median of
--repeat runs after one warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from _support import create_database, postgres_server  # noqa: E402
from queue_throughput import seed, start_sink  # noqa: E402
from snapshot_scaling import PROVIDERS, add_providers, generate_day  # noqa: E402

from mailpipe.db import Database, admin_execute, redact_url  # noqa: E402

# ---------------------------------------------------------------- part 1: one flow run


async def flow_run(url: str, mode: str) -> dict[str, float]:
    """Child process: a process_email_queue run. ``mode``: ``none`` (drain only), ``inline``
    (the check in this process) or ``worker`` (answered by a running check worker)."""
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
    from mailpipe import quality, quality_checks
    from mailpipe.delivery import drain_queue

    async with Database(url, max_size=4) as db:
        result = await drain_queue(db, batch_size=500, concurrency=2, time_budget=3600)
        drained = time.perf_counter()
        if mode == "inline":
            report, _ = await quality.acheck_after_run(
                "process_email_queue", started, database_url=url
            )
        elif mode == "worker":
            assert await quality_checks.workers_alive(db) == 1
            report = await quality_checks.post_run_check(db, "process_email_queue", started)
        done = time.perf_counter()
        checked_by = await db.fetch_value(
            "SELECT checked_by FROM quality_checks ORDER BY id DESC LIMIT 1"
        )
    if mode != "none":
        assert report.success, report.markdown()
    if mode == "worker":
        assert checked_by.startswith("worker "), checked_by
    return {
        "sent": result.counts["sent"],
        "drain": drained - t0,
        "post_run": done - drained,
        "total": done - t0,
    }


def run_child(url: str, env: dict[str, str], mode: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--child-flow-run", url, "--mode", mode]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of the flow process: unlike wall time, barely moved by load
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "cpu": cpu}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_check_worker(url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`mailpipe check worker` on the bench database; returns once it is ready."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "mailpipe", "check", "worker", "--poll", "1"],
        env={**env, "DATABASE_URL": url},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )

    async def ready() -> None:
        from mailpipe import quality_checks

        async with Database(url, min_size=1, max_size=1) as db:
            deadline = time.monotonic() + 120
            async with db.listen() as session:
                while not await quality_checks.workers_alive(db):
                    assert worker.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, "worker not ready in 120 s"
                    await session.wait(timeout=0.2)

    asyncio.run(ready())
    return worker


def part1(admin: str, events: int, repeat: int, tmp: Path) -> None:
    url = create_database(admin, "mailpipe_qbench_drain")
    sink, port, sink_name = start_sink()
    base = {
        **os.environ,
        "MAILPIPE_DATA_DIR": str(tmp / "data"),
        "MAILPIPE_QUALITY_RESULTS_DIR": str(tmp / "quality"),
    }
    compiled = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
    compiled["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    try:
        print(
            f"part 1: a process_email_queue run in a fresh process: drain {events} queued"
            f" events (2 drainers, batches of 500, {sink_name}), then the flow's checkpoint"
            f" on the run's rows; median of {repeat}"
        )
        asyncio.run(seed(url, port, 10, 2))
        run_child(url, compiled, "inline")  # fills the bytecode cache of the compiled variant
        for label, env in (("no .pyc (this box)", base), ("compiled bytecode", compiled)):
            worker = start_check_worker(url, env, tmp / "worker.log")
            try:
                runs: dict[str, list[dict[str, float]]] = {"none": [], "inline": [], "worker": []}
                worker_cpu: list[float] = []
                for _ in range(repeat + 1):  # the first round warms the worker up
                    for mode in runs:  # interleaved, so load changes hit every mode alike
                        asyncio.run(seed(url, port, events, 2))
                        cpu0 = process_cpu(worker.pid)
                        r = run_child(url, env, mode)
                        assert r["sent"] == events, r
                        runs[mode].append(r)
                        if mode == "worker":
                            worker_cpu.append(process_cpu(worker.pid) - cpu0)
                runs = {mode: rs[1:] for mode, rs in runs.items()}
                worker_cpu = worker_cpu[1:]
            finally:
                worker.terminate()
                worker.wait(30)
            base_total = statistics.median(r["total"] for r in runs["none"])
            base_cpu = statistics.median(r["cpu"] for r in runs["none"])
            print(f"  {label}: drain only {base_total:.1f} s ({base_cpu:.1f} s CPU)")
            for mode, what in (
                ("inline", "checked in the flow run (GX imported)"),
                ("worker", "answered by `mailpipe check worker`"),
            ):
                total = statistics.median(r["total"] for r in runs[mode])
                post = statistics.median(r["post_run"] for r in runs[mode])
                cpu = statistics.median(r["cpu"] for r in runs[mode]) - base_cpu
                if mode == "worker":
                    cpu += statistics.median(worker_cpu)
                added = total / base_total - 1
                print(
                    f"    {what:40} run {total:5.1f} s, {post:4.2f} s after the drain:"
                    f" {100 * added:+.0f}% [{'ok' if added <= 0.15 else 'over'} vs 15%];"
                    f" CPU {cpu:+.1f} s",
                    flush=True,
                )
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=10)


# ---------------------------------------------------------------- part 2: 1M rows


async def load(url: str, rows: int, probes: int, window_events: int) -> dt.datetime:
    day = date.today() - dt.timedelta(days=1)
    async with Database(url, min_size=1, max_size=2) as db:
        await add_providers(db, per_minute_limit=100000)
        await generate_day(db, day, "q", 0, rows, probes)
        await db.execute(
            "INSERT INTO rate_limit_counters (scope, key, window_size, window_start, count,"
            " limit_value, updated_at) SELECT 'provider', 'provider-' || p, 'minute', m,"
            " 50, 100000, m FROM generate_series(0, %s - 1) AS p,"
            " generate_series(%s::date::timestamptz, %s::date + interval '1 day' - interval"
            " '1 minute', interval '1 minute') AS m",
            (PROVIDERS, day, day),
        )
        from mailpipe.snapshots import snapshot_day

        await snapshot_day(db, day, "UTC")
        await db.execute("VACUUM ANALYZE")
        # ``since`` such that the window holds the newest ``events`` events, as one run would
        return await db.fetch_value(
            "SELECT updated_at FROM communication_events"
            " ORDER BY updated_at DESC OFFSET %s LIMIT 1",
            (window_events,),
        )


def timed(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def part2(admin: str, rows: int, window_events: int, repeat: int) -> None:
    url = create_database(admin, "mailpipe_qbench_rows")
    t0 = time.perf_counter()
    since = asyncio.run(load(url, rows, rows // 3, window_events))
    print(
        f"part 2: {rows:,} events + {rows:,} confirmations, {rows // 10:,} attempts,"
        f" {rows // 3:,} probes (loaded in {time.perf_counter() - t0:.0f} s)"
    )
    t0 = time.perf_counter()
    import great_expectations  # noqa: F401 - the import, timed on its own

    from mailpipe import quality

    print(f"  import great_expectations: {time.perf_counter() - t0:.1f} s")
    since = since + quality.WINDOW_MARGIN  # the check subtracts the margin again

    def windowed() -> None:
        report, _ = quality.check_after_run("process_email_queue", since, database_url=url)
        assert report.success, report.markdown()

    def whole() -> None:
        report = quality.run_checks(None, None, url)
        assert report.success, report.markdown()

    w = timed(windowed, repeat)
    print(
        f"  process_email_queue checkpoint, window of the newest {window_events:,} events:"
        f" {w:.2f} s",
        flush=True,
    )
    a = timed(whole, repeat)
    print(f"  all 7 suites on whole tables ({rows:,} rows): {a:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000, help="events the flow run drains")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for part 2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-drain", action="store_true", help="part 2 only")
    parser.add_argument("--skip-rows", action="store_true", help="part 1 only")
    parser.add_argument("--database-url", help="a server for the bench databases")
    parser.add_argument("--child-flow-run", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="inline", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_flow_run:
        print(json.dumps(asyncio.run(flow_run(args.child_flow_run, args.mode))))
        return

    tmp = Path(tempfile.mkdtemp(prefix="mailpipe-qbench-"))
    try:
        with postgres_server(args.database_url, tmp / "pg") as admin:
            print(f"Postgres: {redact_url(admin)}; {os.cpu_count()} cores")
            try:
                if not args.skip_drain:
                    part1(admin, args.events, args.repeat, tmp)
                if not args.skip_rows:
                    part2(admin, args.rows, args.events, args.repeat)
            finally:
                if args.database_url:
                    admin_execute(
                        admin,
                        [
                            "DROP DATABASE IF EXISTS mailpipe_qbench_drain WITH (FORCE)",
                            "DROP DATABASE IF EXISTS mailpipe_qbench_rows WITH (FORCE)",
                        ],
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
