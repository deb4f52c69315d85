"""Benchmark: snapshot_email_health on a big day, then with 10x history on other days.

Run by hand (not a test):

    uv run python bench/snapshot_scaling.py                 # 1M events/confirmations, 300k probes
    uv run python bench/snapshot_scaling.py --events 200000 # quicker

It uses its own databases: on an embedded Postgres in a temporary folder, or, with
``--database-url``, two new databases created on that server and dropped afterwards. Two databases
get the same target day; the second also gets --history-factor times as much traffic on the
days before. Data is generated set-based (INSERT ... SELECT generate_series) with triggers and
foreign-key checks off for the load (session_replication_role = replica), then VACUUM ANALYZE.
The target day's snapshot is then timed on both, interleaved (1 warm-up each, then the median
of --repeat runs each). Targets: <= 3 s, and history costs <= 1.3x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _support import embedded_postgres

from mailpipe.db import Database, admin_execute, redact_url, with_database_name
from mailpipe.migrations import migrate
from mailpipe.snapshots import day_bounds, explain_day, snapshot_day

PROVIDERS = 5
# Tables of a few rows per day or per provider: not part of the scaling question.
SMALL_TABLES = {"smtp_provider_configs", "email_health_snapshots"}

# One day of traffic: n sent events (+2% failed), n confirmations, n/10 unsuccessful attempts,
# probes; spread evenly over the day, ids and Message-IDs ascending like a real insert stream.
GENERATE_EVENTS = """
INSERT INTO communication_events (id, event_type, recipient_email, template_key, status,
    message_id, provider_name, created_at, scheduled_at, sent_at, updated_at, last_attempt_at,
    retry_count, error_class, last_error)
SELECT %(id_base)s + i, 'welcome', 'user' || (i %% 100000) || '@example.com', 'welcome',
       CASE WHEN i > %(n)s THEN 'failed' ELSE 'sent' END,
       '<bench-' || %(tag)s || '-' || lpad(i::text, 9, '0') || '@mailpipe.local>',
       'provider-' || (i %% %(providers)s),
       t, t,
       CASE WHEN i <= %(n)s THEN t + make_interval(secs => i %% 600) END,
       t + make_interval(secs => i %% 600), t + make_interval(secs => i %% 600),
       CASE WHEN i %% 10 = 0 THEN 1 ELSE 0 END,
       CASE WHEN i > %(n)s THEN (ARRAY['rejected', 'bounced', 'retries_exhausted'])[1 + i %% 3] END,
       CASE WHEN i > %(n)s THEN '550 no such user' END
  FROM generate_series(1, %(n)s + %(n)s / 50) AS i,
       LATERAL (SELECT %(day_start)s::timestamptz
                       + ((i - 1) %% %(n)s) * (interval '1 day' / %(n)s)) AS x(t)
"""

GENERATE_CONFIRMATIONS = """
INSERT INTO smtp_delivery_confirmations (communication_event_id, provider_name, message_id,
    recipient_email, status, smtp_code, smtp_response, created_at)
SELECT %(id_base)s + i, 'provider-' || (i %% %(providers)s),
       '<bench-' || %(tag)s || '-' || lpad(i::text, 9, '0') || '@mailpipe.local>',
       'user' || (i %% 100000) || '@example.com', 'accepted', 250, '250 2.0.0 OK',
       %(day_start)s::timestamptz + (i - 1) * (interval '1 day' / %(n)s)
                                  + make_interval(secs => i %% 600)
  FROM generate_series(1, %(n)s) AS i
"""

GENERATE_ATTEMPTS = """
INSERT INTO delivery_attempts (communication_event_id, provider_name, attempted_at, outcome,
                               smtp_code, error)
SELECT %(id_base)s + i * 10, 'provider-' || (i %% %(providers)s),
       %(day_start)s::timestamptz + (i - 1) * (interval '1 day' / (%(n)s / 10)),
       (ARRAY['retry', 'deferred', 'bounced', 'failover', 'suppressed'])[1 + i %% 5],
       CASE WHEN i %% 5 = 2 THEN 550 ELSE 451 END, 'bench'
  FROM generate_series(1, %(n)s / 10) AS i
"""

GENERATE_PROBES = """
INSERT INTO smtp_connection_audit (provider_name, host, success, connection_attempt_at, result,
                                   latency_ms, created_at)
SELECT 'provider-' || (i %% %(providers)s), 'smtp.example.com', i %% 20 <> 0, t,
       CASE WHEN i %% 20 = 0 THEN 'timeout' ELSE 'ok' END, 20 + i %% 200, t
  FROM generate_series(1, %(probes)s) AS i,
       LATERAL (SELECT %(day_start)s::timestamptz
                       + (i - 1) * (interval '1 day' / %(probes)s)) AS x(t)
"""


async def generate_day(
    db: Database, day: date, tag: str, id_base: int, n: int, probes: int
) -> None:
    """Load one day of traffic in one transaction with triggers and FK checks off."""
    day_start, _ = await day_bounds(db, day, "UTC")
    params = {
        "day_start": day_start,
        "tag": tag,
        "id_base": id_base,
        "n": n,
        "probes": probes,
        "providers": PROVIDERS,
    }
    async with db.transaction() as tx:
        await tx.execute("SET LOCAL session_replication_role = replica")
        for sql in (GENERATE_EVENTS, GENERATE_CONFIRMATIONS, GENERATE_ATTEMPTS, GENERATE_PROBES):
            await tx.execute(sql, params)


async def print_plan(db: Database, day: date) -> None:
    print("  scans (EXPLAIN ANALYZE): relation / node / index / rows read")
    for scan in await explain_day(db, day, "UTC"):
        if scan["relation"] in SMALL_TABLES or not (scan["relation"] or scan["index"]):
            continue
        print(
            f"    {scan['relation'] or '':30} {scan['node']:18} {scan['index'] or '':50}"
            f" {scan['rows']:>10,}"
        )


async def add_providers(db: Database, *, per_minute_limit: int | None = None) -> None:
    """The PROVIDERS providers the generated traffic names: provider-0, provider-1, ..."""
    await db.execute(
        "INSERT INTO smtp_provider_configs (provider_name, host, created_at, per_minute_limit)"
        " SELECT 'provider-' || i, 'smtp' || i || '.example.com', '2025-01-01', %s::integer"
        " FROM generate_series(0, %s - 1) AS i",
        (per_minute_limit, PROVIDERS),
    )


async def prepare(db: Database, target: date, n: int, probes: int, history: int) -> None:
    """Migrate, add the providers, load the target day and ``history`` days before it."""
    await migrate(db)
    await add_providers(db)
    await generate_day(db, target, "t", 0, n, probes)
    per_day_ids = n + n // 50
    for k in range(1, history + 1):
        await generate_day(db, target - timedelta(days=k), f"h{k}", k * per_day_ids * 2, n, probes)
        print(f"  history day {k}/{history} loaded", flush=True)
    await db.execute("VACUUM ANALYZE")


async def bench(day_url: str, history_url: str, args: argparse.Namespace) -> None:
    n, probes, target = args.events, args.probes, date(2025, 6, 15)
    async with (
        Database(day_url, min_size=1, max_size=2) as day_db,
        Database(history_url, min_size=1, max_size=2) as history_db,
    ):
        t0 = time.perf_counter()
        await prepare(day_db, target, n, probes, 0)
        print(
            f"database 1, target day {target} only: {n:,} sent events + {n // 50:,} failed,"
            f" {n:,} confirmations, {n // 10:,} attempts, {probes:,} probes (generated in "
            f"{time.perf_counter() - t0:.0f} s)"
        )
        t0 = time.perf_counter()
        await prepare(history_db, target, n, probes, args.history_factor)
        total = await history_db.fetch_value("SELECT count(*) FROM communication_events")
        print(
            f"database 2, the same day + {args.history_factor}x history on the days before"
            f" ({total:,} events in total, generated in {time.perf_counter() - t0:.0f} s)"
        )

        # Interleaved (day, history, day, history, ...) so that a change in machine load
        # during the runs hits both sides alike.
        first = [
            (await snapshot_day(day_db, target, "UTC")).seconds,
            (await snapshot_day(history_db, target, "UTC")).seconds,
        ]
        times: list[list[float]] = [[], []]
        rows = 0
        for _ in range(args.repeat):
            for side, db in enumerate((day_db, history_db)):
                snap = await snapshot_day(db, target, "UTC")
                times[side].append(snap.seconds)
                rows = len(snap.rows)
        day_s, history_s = statistics.median(times[0]), statistics.median(times[1])
        for label, db, cold, runs in (
            ("target day only", day_db, first[0], times[0]),
            ("with history", history_db, first[1], times[1]),
        ):
            print(
                f"{label}: first run {cold:.3f} s; runs "
                f"{', '.join(f'{t:.3f}' for t in runs)} s ({rows} rows per run)"
            )
            await print_plan(db, target)

    ratio = history_s / day_s
    print()
    print(
        f"RESULT  {n:,}-event day {day_s:.3f} s median (target <= 3 s: "
        f"{'ok' if max(day_s, history_s) <= 3 else 'MISSED'});  with "
        f"{args.history_factor}x history {history_s:.3f} s;  ratio {ratio:.2f}x "
        f"(target <= 1.3x: {'ok' if ratio <= 1.3 else 'MISSED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        help="sent events and confirmations on the target day",
    )
    parser.add_argument("--probes", type=int, default=300_000, help="audit probes per day")
    parser.add_argument(
        "--history-factor",
        type=int,
        default=10,
        help="days of the same traffic added before the target day",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (median)")
    parser.add_argument(
        "--database-url", help="a server to create the bench database on (default: embedded)"
    )
    args = parser.parse_args()

    if args.database_url:
        admin, label = args.database_url, redact_url(args.database_url)
        run(admin, label, args)
        return

    with (
        tempfile.TemporaryDirectory(prefix="mailpipe-bench-") as folder,
        embedded_postgres(Path(folder) / "pgdata", cleanup_mode="delete") as admin,
    ):
        run(admin, f"an embedded Postgres in {folder}", args)


def run(admin_url: str, label: str, args: argparse.Namespace) -> None:
    """Create the two bench databases on the server, run, drop them."""
    names = [f"mailpipe_bench_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("day", "history")]
    admin_execute(admin_url, [f"CREATE DATABASE {name}" for name in names])
    print(f"databases {', '.join(names)} on {label}")
    try:
        asyncio.run(bench(*(with_database_name(admin_url, name) for name in names), args))
    finally:
        admin_execute(admin_url, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" for name in names])


if __name__ == "__main__":
    main()
