"""Queue throughput: mailpipe end to end against raw aiosmtplib ceilings and a naive baseline.

Run by hand (not a test):  uv run python bench/queue_throughput.py [--events 20000]

All four runs use the same sink and the same number of SMTP connections:
  (d) transport ceiling: prebuilt message bytes sent in a raw aiosmtplib loop
  (a) build ceiling: the same loop rendering and building each message as mailpipe does
  (b) mailpipe: N queued events drained end to end (claim, render, build, send, confirm)
  (c) naive baseline: claim, send and commit one row at a time
The sink is Postfix's smtp-sink when installed (Debian package `postfix`), else an aiosmtpd
sink in its own process. Prints msgs/s, the ratios against (a) and (d), and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402
from _support import create_database, postgres_server, start_sink  # noqa: E402

from mailpipe.db import Database  # noqa: E402
from mailpipe.delivery import drain_in_processes  # noqa: E402
from mailpipe.messages import build_message, validate_recipient  # noqa: E402
from mailpipe.templates import CompiledTemplate  # noqa: E402

SUBJECT = "Your order {{ order }} is on its way, {{ name }}"
TEXT = "Hi {{ name }},\n\nOrder {{ order }} ships today. Total: {{ total }} EUR.\n" * 3
HTML = "<p>Hi {{ name }},</p><p>Order <b>{{ order }}</b> ships today.</p>" * 3
SENDER = "Shop <shop@example.com>"


def render_and_build(template: CompiledTemplate, i: int) -> bytes:
    rendered = template.render({"name": f"Customer {i}", "order": 100000 + i, "total": "42.00"})
    return build_message(
        sender=SENDER,
        recipient=validate_recipient(f"user{i}@example.com"),
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=f"<bench-{i}@example.com>",
        headers={"X-Mailpipe-Event": str(i)},
    )


async def raw_loop(port: int, n: int, connections: int, *, prebuilt: bool) -> float:
    template = CompiledTemplate("bench", 1, SUBJECT, TEXT, HTML, None)
    messages = [render_and_build(template, i) for i in range(n)] if prebuilt else None
    counter = iter(range(n))

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await client.connect()
        for i in counter:
            data = messages[i] if messages is not None else render_and_build(template, i)
            await client.mail("shop@example.com")
            await client.rcpt(f"user{i}@example.com")
            await client.data(data)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return n / (time.perf_counter() - started)


async def seed(url: str, port: int, n: int, connections: int) -> None:
    async with Database(url, min_size=1, max_size=2) as db:
        await db.execute(
            "TRUNCATE communication_events, smtp_delivery_confirmations,"
            " delivery_attempts, smtp_provider_configs, email_templates,"
            " rate_limit_counters"
        )
        await db.execute(
            "INSERT INTO smtp_provider_configs (provider_name, host, port, tls_mode,"
            " from_address, max_connections) VALUES ('sink', '127.0.0.1', %s, 'none', %s, %s)",
            (port, SENDER, connections),
        )
        await db.execute(
            "INSERT INTO email_templates (template_key, subject, text_body, html_body)"
            " VALUES ('bench', %s, %s, %s)",
            (SUBJECT, TEXT, HTML),
        )
        await db.execute(
            "INSERT INTO communication_events (event_type, recipient_email, template_key,"
            " payload) SELECT 'bench', 'user' || g || '@example.com', 'bench',"
            " jsonb_build_object('name', 'Customer ' || g, 'order', 100000 + g,"
            "                    'total', '42.00')"
            " FROM generate_series(1, %s) g",
            (n,),
        )
        await db.execute("VACUUM ANALYZE communication_events")


async def sent_count(url: str) -> int:
    async with Database(url, min_size=1, max_size=1) as db:
        return int(
            await db.fetch_value("SELECT count(*) FROM communication_events WHERE status = 'sent'")
        )


def mailpipe_run(
    url: str, port: int, n: int, connections: int, processes: int, batch_size: int
) -> tuple[float, int]:
    per_process = max(1, connections // processes)
    asyncio.run(seed(url, port, n, per_process))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = drain_in_processes(
        url, processes=processes, batch_size=batch_size, concurrency=1, time_budget=3600
    )
    elapsed = time.perf_counter() - started
    rss = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    sent = asyncio.run(sent_count(url))
    assert sent == n == result.counts["sent"], (sent, n, result.summary())
    return n / elapsed, rss


async def naive_run(url: str, port: int, n: int, connections: int) -> float:
    """The simplest correct design: one row per transaction, claim-send-commit."""
    await seed(url, port, n, connections)
    template = CompiledTemplate("bench", 1, SUBJECT, TEXT, HTML, None)

    async def worker(db: Database) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await client.connect()
        while True:
            async with db.transaction() as tx:
                row = await tx.fetch_one(
                    "SELECT id, recipient_email, payload, message_id FROM communication_events"
                    " WHERE status = 'queued' ORDER BY priority, scheduled_at, id"
                    " LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
                if row is None:
                    break
                rendered = template.render(row["payload"])
                data = build_message(
                    sender=SENDER,
                    recipient=validate_recipient(row["recipient_email"]),
                    subject=rendered.subject,
                    text=rendered.text,
                    html=rendered.html,
                    message_id=row["message_id"],
                )
                await client.mail("shop@example.com")
                await client.rcpt(row["recipient_email"])
                response = await client.data(data)
                await tx.execute(
                    "UPDATE communication_events SET status = 'sent',"
                    " sent_at = now() WHERE id = %s",
                    (row["id"],),
                )
                await tx.execute(
                    "INSERT INTO smtp_delivery_confirmations (communication_event_id,"
                    " provider_name, message_id, recipient_email, smtp_code)"
                    " VALUES (%s, 'sink', %s, %s, %s)",
                    (row["id"], row["message_id"], row["recipient_email"], response.code),
                )
        await client.quit()

    async with Database(url, min_size=connections, max_size=connections) as db:
        started = time.perf_counter()
        await asyncio.gather(*(worker(db) for _ in range(connections)))
        return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--naive-events", type=int, default=3000)
    parser.add_argument(
        "--rss-check",
        action="store_true",
        help="also drain 10k and 100k events and compare peak RSS",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mailpipe-bench-"))
    try:
        with postgres_server(os.environ.get("DATABASE_URL"), tmp / "pg") as admin:
            url = create_database(admin, "mailpipe_bench")
            sink, port, sink_name = start_sink()
            try:
                run(url, port, sink_name, args)
            finally:
                sink.send_signal(signal.SIGTERM)
                sink.wait(timeout=10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(url: str, port: int, sink_name: str, args: argparse.Namespace) -> None:
    """The four runs (and the RSS check) against the sink, printed."""
    n, c = args.events, args.connections
    print(
        f"sink: {sink_name}; {n} events; {c} SMTP connections; "
        f"{args.processes} drainer processes; batch {args.batch_size}; "
        f"{os.cpu_count()} cores"
    )
    d = asyncio.run(raw_loop(port, n, c, prebuilt=True))
    a = asyncio.run(raw_loop(port, n, c, prebuilt=False))
    b, rss = mailpipe_run(url, port, n, c, args.processes, args.batch_size)
    naive = asyncio.run(naive_run(url, port, args.naive_events, c))
    print(f"(d) transport ceiling (prebuilt bytes, 1 process): {d:8.0f} msg/s")
    print(f"(a) build ceiling (render+build+send, 1 process):  {a:8.0f} msg/s")
    print(
        f"(b) mailpipe end to end ({args.processes} processes):       {b:8.0f} msg/s"
        f"   = {b / a:.2f} x (a), {b / d:.2f} x (d)   [targets >= 0.75, >= 0.60]"
    )
    print(
        f"(c) naive row-at-a-time baseline:                  {naive:8.0f} msg/s"
        f"   mailpipe = {b / naive:.1f} x naive"
    )
    print(f"peak RSS of a drainer process: {rss / 1024:.0f} MiB")
    if args.rss_check:
        rates = {}
        for size in (10_000, 100_000):
            rate, peak = mailpipe_run(url, port, size, c, args.processes, args.batch_size)
            rates[size] = (rate, peak)
            print(f"  {size:>7} events: {rate:6.0f} msg/s, peak RSS {peak / 1024:.0f} MiB")
        ratio = rates[100_000][1] / rates[10_000][1]
        print(f"peak RSS 100k / 10k = {ratio:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
