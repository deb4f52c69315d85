"""One drainer in its own OS process, so a suite can SIGKILL it or run several at once.

``python -m tests.reliability.drainer DATABASE_URL [--batch-size N] [--concurrency N]
[--time-budget S]`` runs the engine's :func:`mailpipe.delivery.drain_queue` (the same call
``process_email_queue`` makes) and prints one JSON line: the summary, or the error.
Settings come from the environment (``MAILPIPE_*``), as on a worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from mailpipe.db import Database
from mailpipe.delivery import drain_queue
from mailpipe.errors import MailpipeError


def main() -> int:
    """Drain, print the summary as JSON; exit 2 with {"error", "message"} on a mailpipe error."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--time-budget", type=float, default=120.0)
    args = parser.parse_args()

    async def go() -> dict:
        async with Database(args.url, min_size=1, max_size=args.concurrency + 2) as db:
            result = await drain_queue(
                db,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                time_budget=args.time_budget,
            )
        return {**result.summary(), "worker": result.worker}

    try:
        summary = asyncio.run(go())
    except MailpipeError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
