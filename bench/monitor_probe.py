"""Benchmark: probing N providers concurrently takes about as long as the slowest probe.

Run by hand (not a test):

    uv run python bench/monitor_probe.py                  # 20 providers, one 1 s slow
    uv run python bench/monitor_probe.py --providers 50 --slow-seconds 2

Starts N real in-process SMTP servers (mailpipe.testing.smtpd); one of them waits
--slow-seconds before answering EHLO, the others --rtt-seconds (a stand-in for the network
round trips of a real provider; 0 for bare loopback). Measures, as the median of --repeat runs:
(a) the slow provider probed alone, (b) all N probed with mailpipe.monitoring.probe_all (what
monitor_smtp_health does), and (c) the N probed one after another, the naive baseline. The
target is (b) / (a) close to 1 (<= 1.2): the run costs the slowest probe, not the sum.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailpipe.config import Settings  # noqa: E402
from mailpipe.monitoring import probe_all, probe_provider  # noqa: E402
from mailpipe.providers import Provider  # noqa: E402
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer  # noqa: E402


def provider(name: str, port: int) -> Provider:
    """A provider row pointing at a local server (no TLS, no AUTH)."""
    return Provider(
        id=0,
        name=name,
        host="127.0.0.1",
        port=port,
        tls_mode="none",
        username=None,
        credentials=None,
        from_address=None,
        priority=1,
        timeout_seconds=30.0,
        max_connections=1,
        per_minute_limit=None,
        per_hour_limit=None,
        per_day_limit=None,
        status="active",
        suspended_until=None,
        health_score=100.0,
        consecutive_failures=0,
        last_checked=None,
    )


async def timed(coro_factory, repeat: int) -> float:
    """Median seconds of ``repeat`` runs after one warm-up."""
    await coro_factory()
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        await coro_factory()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


async def bench(providers: list[Provider], slow: Provider, repeat: int) -> None:
    settings = Settings()

    async def sequential() -> None:
        for p in providers:
            await probe_provider(p, settings=settings)

    results = await probe_all(providers, settings=settings)
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"probes failed: {failed}")
    alone = await timed(lambda: probe_provider(slow, settings=settings), repeat)
    together = await timed(lambda: probe_all(providers, settings=settings), repeat)
    one_by_one = await timed(sequential, repeat)
    n = len(providers)
    print(f"(a) slowest provider alone:         {alone * 1000:8.0f} ms")
    print(f"(b) {n} providers, concurrently:    {together * 1000:8.0f} ms")
    print(f"(c) {n} providers, one after another: {one_by_one * 1000:6.0f} ms")
    print(f"(b) / (a) = {together / alone:.2f}   (target <= 1.2)")
    print(f"(c) / (b) = {one_by_one / together:.1f}x slower without concurrency")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--providers", type=int, default=20)
    parser.add_argument("--slow-seconds", type=float, default=1.0)
    parser.add_argument(
        "--rtt-seconds", type=float, default=0.1, help="EHLO delay of the other servers"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (median)")
    args = parser.parse_args()

    servers = [SMTPTestServer(Behaviour(ehlo_delay=args.slow_seconds)).start()]
    servers += [
        SMTPTestServer(Behaviour(ehlo_delay=args.rtt_seconds)).start()
        for _ in range(args.providers - 1)
    ]
    try:
        providers = [provider(f"p{i:02d}", s.port) for i, s in enumerate(servers)]
        print(
            f"{args.providers} in-process SMTP servers; p00 answers EHLO after "
            f"{args.slow_seconds:g} s, the others after {args.rtt_seconds:g} s"
        )
        asyncio.run(bench(providers, providers[0], args.repeat))
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
