"""Shared tools of the reliability suites: drainer processes, deadline polling, the ledger that
reconciles the database with what the SMTP servers received, the recovery check after a crash
or a lost connection, queries as another role, and the figures of a run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mailpipe.db import Database, Row
from mailpipe.delivery import drain_queue
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
# The application_name of the engine's connections (mailpipe.db.Database's default); the
# suites' own pools use another (conftest.TEST_APPLICATION).
ENGINE = "mailpipe"


class DeadlineExceeded(AssertionError):
    """A polled condition did not become true in time."""


class Rollback(Exception):
    """Raised inside a test's blocking transaction to roll it back (and release its locks)."""


async def wait_for(check: Callable[[], Awaitable[T] | T], *, timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds.

    Synchronisation by observation, never by a fixed sleep: the test moves on as soon as the
    condition holds, and a condition that never holds fails with ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.01)


class DrainerProcess:
    """``python -m tests.reliability.drainer`` in its own OS process (killable with SIGKILL)."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 50,
        concurrency: int = 1,
        time_budget: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.reliability.drainer",
                url,
                "--batch-size",
                str(batch_size),
                "--concurrency",
                str(concurrency),
                "--time-budget",
                str(time_budget),
            ],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid

    @property
    def worker_prefix(self) -> str:
        """What ``locked_by`` holds for rows this process claimed: ``host:pid:``."""
        return f":{self.pid}:"

    def kill(self) -> None:
        """kill -9: no cleanup, no goodbye to Postgres or SMTP (a crashed or OOM-killed worker)."""
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def result(self, timeout: float = 180.0) -> tuple[int, dict[str, Any], str]:
        """Wait for the process; (exit code, its JSON line, its stderr)."""
        out, err = self.process.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return self.process.returncode, json.loads(lines[-1]) if lines else {}, err

    def stop(self) -> None:
        """Kill it if it still runs (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


async def events(db: Database) -> list[Row]:
    """Every event with the columns the ledger needs."""
    return await db.fetch_all(
        "SELECT id, status, message_id, may_be_duplicate, error_class, last_error, retry_count,"
        " provider_name, locked_by, lease_expires_at FROM communication_events ORDER BY id"
    )


async def recorded_message_ids(db: Database) -> set[str]:
    """Message-IDs of the events recorded as sent (what a crash did not lose track of)."""
    return {
        r["message_id"]
        for r in await db.fetch_all(
            "SELECT message_id FROM communication_events WHERE status = 'sent'"
        )
    }


async def expire_leases(db: Database) -> int:
    """Time passes: every lease still held (by a dead worker) runs out now."""
    return await db.execute(
        "UPDATE communication_events SET lease_expires_at = now() - interval '1 second'"
        " WHERE status = 'processing'"
    )


async def make_retries_due(db: Database) -> int:
    """Time passes: every event waiting for its retry time is due now."""
    return await db.execute(
        "UPDATE communication_events SET scheduled_at = now() - interval '1 second'"
        " WHERE status = 'queued' AND scheduled_at > now()"
    )


async def waiting_on_a_lock(db: Database, application_name: str | None = None) -> bool:
    """Another session on this database (of ``application_name``, when given) is blocked on
    a row, table or transaction lock."""
    return bool(
        await db.fetch_value(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            " AND (%(name)s::text IS NULL OR application_name = %(name)s::text)",
            {"name": application_name},
        )
    )


async def as_role(db: Database, role: str, sql: str) -> list[dict]:
    """Run ``sql`` as ``role`` (SET LOCAL ROLE, in a transaction of its own)."""
    async with db.transaction() as tx:
        await tx.execute(f"SET LOCAL ROLE {role}")
        return await tx.fetch_all(sql)


@dataclass
class Ledger:
    """The database and the SMTP servers, reconciled message by message.

    - ``lost``: an event whose row is gone, or that the database says was sent but no server
      accepted, or that ended failed/suppressed without a reason, or is stuck in processing.
    - ``unrecorded``: a Message-ID a server accepted whose event is not ``sent`` (delivered
      but the database does not know it).
    - ``duplicated``: extra accepted copies of one Message-ID (accepted N times: N - 1).
    - ``ambiguous``: messages a server took and then dropped the connection without a reply
      (or whose reply never arrived): the sender cannot know; retried with the same Message-ID.
    """

    events: int
    statuses: Counter[str]
    accepted: Counter[str]  # Message-ID -> times a server answered 250
    lost: list[int] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    duplicated_ids: list[str] = field(default_factory=list)
    ambiguous: int = 0

    @property
    def duplicated(self) -> int:
        return sum(self.accepted[m] - 1 for m in self.duplicated_ids)

    def figures(self) -> dict[str, Any]:
        return {
            "events": self.events,
            **{f"status_{k}": v for k, v in sorted(self.statuses.items())},
            "accepted_messages": sum(self.accepted.values()),
            "lost": len(self.lost),
            "unrecorded": len(self.unrecorded),
            "duplicated": self.duplicated,
            "ambiguous": self.ambiguous,
        }


def reconcile(
    rows: list[Row], servers: Iterable[SMTPTestServer], *, expected_ids: Iterable[int] | None = None
) -> Ledger:
    """Reconcile event rows with every message the servers recorded (see :class:`Ledger`)."""
    servers = list(servers)
    accepted: Counter[str] = Counter(
        m.message_id for s in servers for m in s.messages if m.accepted and m.message_id
    )
    ledger = Ledger(len(rows), Counter(r["status"] for r in rows), accepted)
    ledger.ambiguous = sum(s.dropped_after_data for s in servers)
    present = {r["id"] for r in rows}
    ledger.lost += sorted(set(expected_ids or ()) - present)
    by_message = {r["message_id"]: r for r in rows}
    for row in rows:
        sent_but_not_accepted = row["status"] == "sent" and not accepted[row["message_id"]]
        failed_without_reason = row["status"] in ("failed", "suppressed") and not row["last_error"]
        if sent_but_not_accepted or failed_without_reason or row["status"] == "processing":
            ledger.lost.append(row["id"])
    for message_id, n in accepted.items():
        row = by_message.get(message_id)
        if row is None or row["status"] != "sent":
            ledger.unrecorded.append(message_id)
        if n > 1:
            ledger.duplicated_ids.append(message_id)
    return ledger


def without_date(content: bytes) -> bytes:
    """A message's bytes without its Date header (the one header a re-send changes)."""
    return re.sub(rb"\nDate: [^\r\n]*", b"", content)


async def recover_and_reconcile(
    db: Database,
    server: SMTPTestServer,
    ids: list[int],
    in_flight: Iterable[str],
    *,
    batch_size: int,
) -> dict[str, Any]:
    """After a crash or a lost connection: the server behaves again, time passes (every lease
    the failed run held runs out), the next run drains the queue; check the promise and return
    the figures (``rescued`` and :meth:`Ledger.figures`).

    ``in_flight``: the Message-IDs the server accepted while their events were not recorded as
    sent, at each crash or lost connection (one Message-ID once per crash it was in flight at).
    The promise: every event sent, 0 lost, 0 unrecorded; the duplicates are exactly the
    in-flight messages, each accepted once more per crash it was in flight at, the same bytes
    every time but for the Date header, and flagged ``may_be_duplicate`` on its confirmation.
    """
    times = Counter(in_flight)
    server.behaviour = Behaviour()
    await expire_leases(db)
    result = await drain_queue(db, batch_size=batch_size)
    ledger = reconcile(await events(db), [server], expected_ids=ids)
    assert ledger.statuses == {"sent": len(ids)}, ledger.statuses
    assert ledger.lost == [] and ledger.unrecorded == []
    assert set(ledger.duplicated_ids) == set(times), (sorted(ledger.duplicated_ids), sorted(times))
    assert {m: ledger.accepted[m] for m in times} == {m: n + 1 for m, n in times.items()}
    assert ledger.duplicated == sum(times.values())
    for message_id in times:
        copies = {without_date(m.content) for m in server.accepted if m.message_id == message_id}
        assert len(copies) == 1, message_id
    flagged = {
        r["message_id"]
        for r in await db.fetch_all(
            "SELECT message_id FROM smtp_delivery_confirmations WHERE may_be_duplicate"
        )
    }
    assert set(times) <= flagged
    return {"rescued": result.rescued, **ledger.figures()}


class Figures:
    """Numbers the suites measured, written as JSON when RELIABILITY_FIGURES names a file
    (``bench/reliability_figures.py`` sets it and prints the table docs/reliability.md shows)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, suite: str, case: str, **numbers: Any) -> None:
        self.rows.append({"suite": suite, "case": case, **numbers})

    def write(self, path: str) -> None:
        target = Path(path)
        existing = json.loads(target.read_text()) if target.exists() else []
        target.write_text(json.dumps(existing + self.rows, indent=1, default=str))
