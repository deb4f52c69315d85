"""A full mailpipe run in its own process, as a worker runs it, for the secrets suite.

``python -m tests.reliability.full_run`` runs the four flows (process_email_queue,
monitor_smtp_health, monitor_email_production, snapshot_email_health) against DATABASE_URL
and PREFECT_API_URL, then the data-quality suites (Data Docs), then the error paths a worker
meets (an unreachable database whose URL carries the password, a provider whose credentials
cannot be resolved), logging at INFO to stderr as a worker would, tracebacks included. The
last stdout line is a JSON summary. The suite then greps every output for the secrets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mailpipe import quality
from mailpipe.config import Settings
from mailpipe.db import Database
from mailpipe.errors import MailpipeError
from mailpipe.feedback.apply import apply_feedback
from mailpipe.feedback.dsn import import_files
from mailpipe.testing.smtpd import free_port

log = logging.getLogger("mailpipe.reliability")
FEEDBACK_FIXTURES = Path(__file__).resolve().parent.parent / "feedback" / "fixtures"


async def run() -> dict[str, Any]:
    from flows.monitor_email_production import monitor_email_production
    from flows.monitor_smtp_health import monitor_smtp_health
    from flows.process_email_queue import process_email_queue
    from flows.snapshot_email_health import snapshot_email_health

    started = time.perf_counter()
    summary: dict[str, Any] = {
        "process_email_queue": await process_email_queue(batch_size=10, concurrency=2),
        "monitor_smtp_health": await monitor_smtp_health(),
        "monitor_email_production": await monitor_email_production(),
        "snapshot_email_health": await snapshot_email_health(),
    }
    summary["flows_seconds"] = round(time.perf_counter() - started, 1)
    # A bounce report arrives from the mailbox and is applied, as the feedback loop does.
    async with Database(min_size=1, max_size=2) as db:
        imported = await import_files(db, [FEEDBACK_FIXTURES / "postfix-bounce.eml"])
        applied = await apply_feedback(db)
    summary["feedback"] = {"imported": imported.added, "applied": applied.as_dict()}
    report = await asyncio.to_thread(quality.run_checks)
    summary["quality"] = {
        "suites": len(report.suites),
        "docs_url": report.docs_url,
        "seconds": round(report.elapsed_seconds, 1),
    }

    errors = []
    password = os.environ["RELIABILITY_DB_PASSWORD"]
    unreachable = f"postgresql://mailpipe:{password}@127.0.0.1:{free_port()}/mailpipe"
    try:
        async with Database(
            unreachable, min_size=1, max_size=1, settings=Settings(connect_timeout=1)
        ):
            pass
    except MailpipeError as exc:
        errors.append(str(exc))
        # What a worker's log shows when a run crashes: the whole chained traceback.
        log.error("run failed", exc_info=exc)
        traceback.print_exception(exc)
    summary["errors"] = errors
    return summary


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    summary = asyncio.run(run())
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
