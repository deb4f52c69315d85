"""Benchmark: monitor_email_production's queries on a 1M-event outbox use indexes.

Run by hand (not a test):

    uv run python bench/monitor_metrics.py                   # 1M events over 7 days
    uv run python bench/monitor_metrics.py --events 200000   # quicker

Uses its own database: an embedded Postgres in a temporary folder, or, with
``--database-url``, a new database created on that server and dropped afterwards. Loads
--events communication_events over --days days (94 % sent with a confirmation each, 2 %
failed, 2 % queued of which a tenth due, a few hundred processing with some leases expired),
a tenth as many delivery attempts, 20 providers probed every 5 minutes for 30 days, suppressions
and per-minute rate-limit counters, all set-based (INSERT ... SELECT generate_series), then
VACUUM ANALYZE. For each monitoring query it prints the execution time and the plan's scan
nodes from EXPLAIN (ANALYZE, BUFFERS), flags any sequential scan of a large table, and times
the whole metrics collection (median of --repeat runs after a warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _support import embedded_postgres  # noqa: E402

from mailpipe.alerts import evaluate_rules, required_windows  # noqa: E402
from mailpipe.db import Database, admin_execute, redact_url, with_database_name  # noqa: E402
from mailpipe.metrics import collect_metrics  # noqa: E402
from mailpipe.migrations import migrate  # noqa: E402
from mailpipe.queries import query  # noqa: E402

PROVIDERS = 20
LARGE = {
    "communication_events",
    "smtp_delivery_confirmations",
    "delivery_attempts",
    "smtp_connection_audit",
    "email_suppressions",
    "rate_limit_counters",
}

LOAD = [
    # providers
    """INSERT INTO smtp_provider_configs (provider_name, host, port, priority)
       SELECT 'p' || lpad(g::text, 2, '0'), 'smtp' || g || '.example.com', 587, g
         FROM generate_series(1, %(providers)s) g""",
    # the outbox: sent, failed, queued (a tenth due), processing
    """INSERT INTO communication_events (event_type, recipient_email, template_key, status,
                                         scheduled_at, sent_at, provider_name, retry_count,
                                         lease_expires_at, created_at, updated_at)
       SELECT 'welcome', 'u' || g || '@example.com', 'welcome',
              CASE WHEN g %% 50 = 0 THEN 'failed'
                   WHEN g %% 50 = 1 THEN 'queued'
                   WHEN g %% 5000 = 2 THEN 'processing'
                   ELSE 'sent' END,
              CASE WHEN g %% 50 = 1 AND g %% 500 <> 1 THEN now() + interval '1 hour' * (g %% 48)
                   ELSE t END,
              CASE WHEN g %% 50 > 1 AND g %% 5000 <> 2 THEN t END,
              'p' || lpad((1 + g %% %(providers)s)::text, 2, '0'),
              CASE WHEN g %% 500 = 1 THEN 1 + g %% 3 ELSE 0 END,
              CASE WHEN g %% 5000 = 2 THEN now() + interval '1 minute' * (g %% 20 - 10) END,
              t, t
         FROM (SELECT g, now() - (%(span)s::interval * g / %(events)s) AS t
                 FROM generate_series(1, %(events)s) g) s""",
    # one confirmation per sent event, a few complaints
    """INSERT INTO smtp_delivery_confirmations (communication_event_id, provider_name,
                                                message_id, recipient_email, status, created_at)
       SELECT id, provider_name, message_id, recipient_email,
              CASE WHEN id %% 2000 = 0 THEN 'complained' ELSE 'accepted' END, sent_at
         FROM communication_events WHERE status = 'sent'""",
    # unsuccessful attempts: a tenth as many
    """INSERT INTO delivery_attempts (communication_event_id, provider_name, outcome, smtp_code,
                                      attempted_at)
       SELECT NULL, 'p' || lpad((1 + g %% %(providers)s)::text, 2, '0'),
              (ARRAY['retry', 'retry', 'failed', 'bounced', 'deferred', 'failover',
                     'suppressed'])[1 + g %% 7], 451,
              now() - (%(span)s::interval * g / (%(events)s / 10))
         FROM generate_series(1, %(events)s / 10) g""",
    # probes: every provider every 5 minutes for 30 days
    """INSERT INTO smtp_connection_audit (provider_name, host, connection_attempt_at, result,
                                          success, latency_ms, ip_address)
       SELECT 'p' || lpad(p::text, 2, '0'), 'smtp' || p || '.example.com',
              now() - interval '5 minutes' * n,
              CASE WHEN (p * n) %% 97 = 0 THEN 'timeout' ELSE 'ok' END,
              (p * n) %% 97 <> 0, 40 + (p * n) %% 200, '192.0.2.1'
         FROM generate_series(1, %(providers)s) p, generate_series(0, 8640) n""",
    # suppressions
    """INSERT INTO email_suppressions (address, kind, reason, created_at)
       SELECT 's' || g || '@example.com', 'address', 'hard_bounce',
              now() - (%(span)s::interval * g / (%(events)s / 50))
         FROM generate_series(1, %(events)s / 50) g""",
    # per-minute provider counters for the whole span, some with deferrals
    """INSERT INTO rate_limit_counters (scope, key, window_size, window_start, count,
                                        limit_value, deferred, updated_at)
       SELECT 'provider', 'p' || lpad(p::text, 2, '0'), 'minute',
              date_trunc('minute', now()) - interval '1 minute' * m, 10, 100,
              CASE WHEN (p + m) %% 100 = 0 THEN 3 ELSE 0 END,
              date_trunc('minute', now()) - interval '1 minute' * m + interval '30 seconds'
         FROM generate_series(1, 5) p,
              generate_series(0, (extract(epoch FROM %(span)s::interval) / 60)::int) m""",
]


async def load(db: Database, events: int, days: int) -> None:
    params = {"events": events, "span": dt.timedelta(days=days), "providers": PROVIDERS}
    started = time.perf_counter()
    async with db.transaction() as tx:
        # Bulk load: no per-row validation trigger (the rows are valid by construction).
        await tx.execute("SET LOCAL session_replication_role = replica")
        for statement in LOAD:
            await tx.execute(statement, params)
    await db.execute("VACUUM ANALYZE")
    counts = await db.fetch_one(
        "SELECT (SELECT count(*) FROM communication_events) AS events,"
        "       (SELECT count(*) FROM smtp_delivery_confirmations) AS confirmations,"
        "       (SELECT count(*) FROM delivery_attempts) AS attempts,"
        "       (SELECT count(*) FROM smtp_connection_audit) AS probes,"
        "       (SELECT count(*) FROM rate_limit_counters) AS counters"
    )
    print(
        f"loaded in {time.perf_counter() - started:.0f}s: "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items())
    )


def scans(plan: dict[str, Any]) -> list[str]:
    """Every scan node of a JSON plan: 'Index Only Scan idx_x on table'."""
    found = []
    if "Scan" in plan["Node Type"]:
        target = plan.get("Index Name") or ""
        relation = plan.get("Relation Name") or ""
        found.append(
            " ".join(
                filter(None, [plan["Node Type"], target, f"on {relation}" if relation else ""])
            )
        )
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


async def explain(
    db: Database, name: str, params: dict[str, Any] | None = None, window: str = ""
) -> bool:
    """Print one query's time and scan nodes; False if it seq-scans a large table."""
    row = await db.fetch_one(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query(name)}", params)
    plan = row["QUERY PLAN"]
    plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]
    nodes = scans(plan["Plan"])
    bad = [n for n in nodes if n.startswith("Seq Scan") and n.split(" on ")[-1] in LARGE]
    label = name + (f" [{window}]" if window else "")
    print(f"  {label:48s} {plan['Execution Time']:8.1f} ms  {'SEQ SCAN!' if bad else 'ok'}")
    for node in dict.fromkeys(nodes):
        print(f"      {node}")
    return not bad


async def bench(url: str, args: argparse.Namespace) -> None:
    async with Database(url, min_size=1, max_size=2) as db:
        await migrate(db)
        await load(db, args.events, args.days)
        names = [f"p{i:02d}" for i in range(1, PROVIDERS + 1)]
        print("\nEXPLAIN (ANALYZE) of each monitoring query:")
        ok = await explain(db, "metrics_queue")
        for window in ("5m", "1h", "24h"):
            span = {"window": _span(window)}
            for name in (
                "metrics_delivery_by_provider",
                "metrics_probes_by_provider",
                "metrics_suppressions_added",
                "metrics_rate_limit_windows",
            ):
                ok &= await explain(db, name, span, window)
        ok &= await explain(db, "metrics_provider_states")
        ok &= await explain(db, "recent_probe_results", {"names": names, "limit": 10})
        ok &= await explain(
            db, "provider_delivery_outcomes", {"names": names, "window": _span("1h")}, "1h"
        )

        windows = required_windows()
        await collect_metrics(db, windows)
        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            metrics = await collect_metrics(db, windows)
            evaluate_rules(metrics)
            runs.append(time.perf_counter() - started)
        print(
            f"\ncollect_metrics + evaluate_rules, windows {windows}, {PROVIDERS} providers: "
            f"median {statistics.median(runs) * 1000:.0f} ms over {args.repeat} runs"
        )
        print(
            f"24h: {metrics.window('24h').sent:,} sent; queue {metrics.queue.queued:,} "
            f"queued, {metrics.queue.due:,} due"
        )
        print("every query index-backed" if ok else "SOME QUERY SEQ-SCANS A LARGE TABLE")


def _span(label: str) -> dt.timedelta:
    from mailpipe.metrics import parse_window

    return parse_window(label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=7, help="days the events spread over")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (median)")
    parser.add_argument(
        "--database-url", help="a server to create the bench database on (default: embedded)"
    )
    args = parser.parse_args()

    if args.database_url:
        name = f"mailpipe_bench_{uuid.uuid4().hex[:8]}"
        admin_execute(args.database_url, [f"CREATE DATABASE {name}"])
        print(f"database {name} on {redact_url(args.database_url)}")
        try:
            asyncio.run(bench(with_database_name(args.database_url, name), args))
        finally:
            admin_execute(args.database_url, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])
        return

    with (
        tempfile.TemporaryDirectory(prefix="mailpipe-bench-") as folder,
        embedded_postgres(Path(folder) / "pgdata", cleanup_mode="delete") as admin,
    ):
        print(f"embedded Postgres in {folder}")
        asyncio.run(bench(admin, args))


if __name__ == "__main__":
    main()
