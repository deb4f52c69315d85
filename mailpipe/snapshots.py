"""Daily health snapshots: the delivery and audit tables aggregated per day and provider.

The aggregation is one SQL statement per day (``snapshots_compute_day`` in
``sql/queries/snapshots.sql``) over index-backed time ranges; it replaces the day's rows in
``email_health_snapshots`` in one transaction, so re-running a day is harmless. Column
definitions live in the migrations' ``COMMENT ON`` (``0005_add_email_health_snapshots.sql``;
``0011_add_feedback_to_snapshots.sql`` for the feedback counts).

pandas is imported only inside :func:`load` / :func:`to_dataframe`, so importing this module
stays light for the flows and the CLI.

A little over 400 lines, a fifth of them the column contract (:data:`COLUMNS`) and the public
names: computing, reading and presenting one table stay together.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mailpipe.config import resolve_timezone
from mailpipe.db import Database, Row
from mailpipe.errors import MailpipeError
from mailpipe.queries import query
from mailpipe.serialization import to_jsonable

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ALL_PROVIDERS",
    "COLUMNS",
    "HEADLINE_METRICS",
    "DaySnapshot",
    "SnapshotRun",
    "aload",
    "artifact_table",
    "day_bounds",
    "fetch_snapshots",
    "headline_markdown",
    "load",
    "resolve_range",
    "run_snapshots",
    "snapshot_day",
    "snapshot_range",
    "to_dataframe",
    "today",
]

#: provider_name of the all-provider row.
ALL_PROVIDERS = "*"

#: Every column of email_health_snapshots with its pandas dtype (the load() contract).
COLUMNS: dict[str, str] = {
    "snapshot_date": "datetime64[ns]",
    "provider_name": "string",
    "timezone": "string",
    "day_start": "datetime64[ns, UTC]",
    "day_end": "datetime64[ns, UTC]",
    "events_created": "int64",
    "sent": "int64",
    "failed": "int64",
    "failed_invalid": "int64",
    "failed_template": "int64",
    "failed_suppressed": "int64",
    "failed_rejected": "int64",
    "failed_bounced": "int64",
    "failed_retries_exhausted": "int64",
    "failed_no_provider": "int64",
    "failed_other": "int64",
    "retried": "int64",
    "deferred": "int64",
    "suppressed": "int64",
    "hard_bounces": "int64",
    "delivery_success_rate": "float64",
    "hard_bounce_rate": "float64",
    "queue_latency_p50_seconds": "float64",
    "queue_latency_p95_seconds": "float64",
    "connection_attempts": "int64",
    "connection_failures": "int64",
    "availability": "float64",
    "probe_latency_mean_ms": "float64",
    "probe_latency_p95_ms": "float64",
    "health_score": "float64",
    "computed_at": "datetime64[ns, UTC]",
    # From feedback (0011): what providers reported after accepting (table order: added last).
    "delivered": "int64",
    "bounced": "int64",
    "complained": "int64",
}

#: (column, label, kind) of the numbers the flow's markdown artifact headlines.
#: kind: "count" (relative change), "rate" (change in percentage points), "seconds", "ms".
HEADLINE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("events_created", "Events created", "count"),
    ("sent", "Sent", "count"),
    ("failed", "Failed", "count"),
    ("retried", "Retried", "count"),
    ("deferred", "Deferred (rate limits)", "count"),
    ("hard_bounces", "Hard bounces", "count"),
    ("delivered", "Delivered (provider reports)", "count"),
    ("bounced", "Bounced after acceptance", "count"),
    ("complained", "Complaints", "count"),
    ("delivery_success_rate", "Delivery success rate", "rate"),
    ("hard_bounce_rate", "Hard-bounce rate", "rate"),
    ("queue_latency_p50_seconds", "Queue latency p50", "seconds"),
    ("queue_latency_p95_seconds", "Queue latency p95", "seconds"),
    ("availability", "Provider availability", "rate"),
)


@dataclass(frozen=True)
class DaySnapshot:
    """The rows one day's snapshot wrote ('*' first), and how long computing it took."""

    day: date
    rows: list[Row]
    seconds: float


@dataclass
class SnapshotRun:
    """What a run computed: its days and, for the last day, the 7 days before it."""

    start: date
    end: date
    timezone: str
    days: list[DaySnapshot] = field(default_factory=list)
    previous: list[Row] = field(default_factory=list)

    @property
    def last(self) -> DaySnapshot:
        """The most recent day computed."""
        return self.days[-1]


async def today(db: Database, timezone: str) -> date:
    """Today's date in ``timezone`` by the database clock."""
    return await db.fetch_value(query("snapshots_today"), {"tz": timezone})


async def resolve_range(
    db: Database, start: date | None, end: date | None, timezone: str
) -> tuple[date, date]:
    """The days to compute: yesterday by default; one bound alone means that single day.

    Refuses an inverted range and days that have not started yet.
    """
    current = await today(db, timezone)
    if start is None and end is None:
        start = end = current - timedelta(days=1)
    start = start or end
    end = end or start
    assert start is not None and end is not None
    if start > end:
        raise MailpipeError(f"--from {start} is after --to {end}: swap them")
    if end > current:
        raise MailpipeError(
            f"{end} has not started yet in {timezone} (today is {current}): "
            f"pick days up to {current}"
        )
    return start, end


async def day_bounds(db: Database, day: date, timezone: str) -> tuple[datetime, datetime]:
    """The instants ``day`` starts and ends in ``timezone`` (computed by Postgres)."""
    row = await db.fetch_one(query("snapshots_day_bounds"), {"day": day, "tz": timezone})
    assert row is not None
    return row["day_start"], row["day_end"]


async def snapshot_day(db: Database, day: date, timezone: str | None = None) -> DaySnapshot:
    """Compute ``day`` and replace its rows in one transaction; returns the rows written."""
    timezone = resolve_timezone(timezone)
    loop = asyncio.get_running_loop()
    started = loop.time()
    day_start, day_end = await day_bounds(db, day, timezone)
    params = {"day": day, "tz": timezone, "day_start": day_start, "day_end": day_end}
    async with db.transaction() as tx:
        await tx.execute(query("snapshots_work_mem"))
        await tx.execute(query("snapshots_compute_day"), params)
        rows = await tx.fetch_all(
            query("snapshots_select_range"), {"start": day, "end": day, "provider": None}
        )
    return DaySnapshot(day, rows, loop.time() - started)


async def snapshot_range(
    db: Database,
    start: date,
    end: date,
    timezone: str | None = None,
    *,
    on_day: Callable[[DaySnapshot], None] | None = None,
) -> list[DaySnapshot]:
    """Compute every day from ``start`` to ``end`` inclusive, one transaction per day.

    A day commits as soon as it is done, so an interrupted backfill keeps what it finished.
    ``on_day`` is called after each day (progress bars).
    """
    timezone = resolve_timezone(timezone)
    done = []
    day = start
    while day <= end:
        snap = await snapshot_day(db, day, timezone)
        done.append(snap)
        if on_day is not None:
            on_day(snap)
        day += timedelta(days=1)
    return done


async def fetch_snapshots(
    db: Database,
    start: date | None = None,
    end: date | None = None,
    provider: str | None = None,
) -> list[Row]:
    """Stored rows between ``start`` and ``end`` (inclusive, either may be None)."""
    return await db.fetch_all(
        query("snapshots_select_range"), {"start": start, "end": end, "provider": provider}
    )


async def run_snapshots(
    start: date | None = None,
    end: date | None = None,
    *,
    database: Database | None = None,
    on_day: Callable[[DaySnapshot], None] | None = None,
    on_range: Callable[[date, date], None] | None = None,
) -> SnapshotRun:
    """The whole job (flow and CLI): resolve the days, compute them, fetch the 7 days before.

    With no ``database`` one is opened from the settings and closed afterwards.
    ``on_range`` learns the resolved range before the first day is computed.
    """
    timezone = resolve_timezone()
    if database is None:
        async with Database(min_size=1, max_size=2) as db:
            return await run_snapshots(start, end, database=db, on_day=on_day, on_range=on_range)
    first, last = await resolve_range(database, start, end, timezone)
    if on_range is not None:
        on_range(first, last)
    run = SnapshotRun(first, last, timezone)
    run.days = await snapshot_range(database, first, last, timezone, on_day=on_day)
    run.previous = await fetch_snapshots(
        database, last - timedelta(days=7), last - timedelta(days=1), ALL_PROVIDERS
    )
    return run


class _Rollback(Exception):
    """Raised to roll back the EXPLAIN ANALYZE of the (writing) compute query."""


async def explain_day(
    db: Database, day: date, timezone: str | None = None, *, force_index: bool = False
) -> list[dict[str, Any]]:
    """The scans the compute query runs for ``day``: relation, node type, index, rows read.

    Runs EXPLAIN ANALYZE in a transaction that is rolled back (the query writes).
    ``force_index`` disables sequential scans, for tables too small for the planner to
    bother with an index: it proves an index *can* bound every read to the day.
    """
    timezone = resolve_timezone(timezone)
    day_start, day_end = await day_bounds(db, day, timezone)
    params = {"day": day, "tz": timezone, "day_start": day_start, "day_end": day_end}
    scans: list[dict[str, Any]] = []
    try:
        async with db.transaction() as tx:
            await tx.execute(query("snapshots_work_mem"))
            if force_index:
                await tx.execute("SET LOCAL enable_seqscan = off")
            plan = await tx.fetch_value(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + query("snapshots_compute_day"), params
            )
            raise _Rollback(plan)
    except _Rollback as rollback:
        plan = rollback.args[0]

    def walk(node: dict[str, Any], parent_rel: str | None = None) -> None:
        relation = node.get("Relation Name") or parent_rel
        if "Scan" in node["Node Type"]:
            scans.append(
                {
                    "relation": node.get("Relation Name"),
                    "node": node["Node Type"],
                    "index": node.get("Index Name"),
                    "rows": node.get("Actual Rows", 0) * node.get("Actual Loops", 1),
                }
            )
        for child in node.get("Plans", []):
            walk(child, relation)

    walk(plan[0]["Plan"])
    return scans


# ---------------------------------------------------------------- artifacts (pure functions)
def artifact_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts for a Prefect table artifact (:func:`to_jsonable`: ISO dates,
    None for NaN), rates rounded to 6 digits for reading."""
    return [
        {key: round(value, 6) if isinstance(value, float) else value for key, value in cells}
        for cells in (to_jsonable(dict(row)).items() for row in rows)
    ]


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "rate":
        return f"{value * 100:.2f} %"
    if kind == "seconds":
        return f"{value:.1f} s"
    if kind == "ms":
        return f"{value:.0f} ms"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _change(value: float | None, average: float | None, kind: str) -> str:
    if value is None or average is None:
        return "-"
    if kind == "rate":
        return f"{(value - average) * 100:+.2f} pp"
    if average == 0:
        return "new" if value else "±0 %"
    return f"{(value - average) / average * 100:+.1f} %"


def headline_markdown(day_row: Row, previous: Sequence[Row]) -> str:
    """Markdown: the day's all-provider numbers next to the average of the days before.

    ``previous`` are the '*' rows of up to 7 days before; a metric's average covers the days
    where it is defined (rates are undefined on a day with nothing to measure).
    """
    day = day_row["snapshot_date"]
    lines = [
        f"# Email health on {day} ({day_row['timezone']})",
        "",
        f"All providers. Change versus the average of the {len(previous)} snapshotted day(s) "
        f"in the 7 days before{' (none yet)' if not previous else ''}; rates change in "
        "percentage points (pp).",
        "",
        "| metric | value | 7-day average | change |",
        "| --- | ---: | ---: | ---: |",
    ]
    for column, label, kind in HEADLINE_METRICS:
        value = day_row.get(column)
        history = [r[column] for r in previous if r.get(column) is not None]
        average = sum(history) / len(history) if history else None
        lines.append(
            f"| {label} | {_fmt(value, kind)} | {_fmt(average, kind)} "
            f"| {_change(value, average, kind)} |"
        )
    failed_classes = [
        (name.removeprefix("failed_").replace("_", " "), day_row[name])
        for name in COLUMNS
        if name.startswith("failed_") and day_row.get(name)
    ]
    if failed_classes:
        lines += [
            "",
            "Failed by reason: "
            + ", ".join(f"{name} {count:,}" for name, count in failed_classes)
            + ".",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- pandas (data team)
def to_dataframe(rows: Sequence[Row]) -> pd.DataFrame:
    """Snapshot rows as a DataFrame with the dtypes of :data:`COLUMNS` (also when empty)."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(rows), columns=list(COLUMNS))
    for column, dtype in COLUMNS.items():
        if dtype.startswith("datetime64[ns, UTC]"):
            frame[column] = pd.to_datetime(frame[column], utc=True).astype(dtype)
        elif dtype.startswith("datetime64"):
            frame[column] = pd.to_datetime(frame[column]).astype(dtype)
        else:
            # None -> NaN for float columns; counts are NOT NULL in the table.
            frame[column] = frame[column].astype(dtype)
    return frame


async def aload(
    db: Database, start: date | None, end: date | None, provider: str | None = None
) -> pd.DataFrame:
    """:func:`load` on an open database."""
    return to_dataframe(await fetch_snapshots(db, start, end, provider))


def load(
    start: date | None,
    end: date | None,
    provider: str | None = None,
    *,
    database_url: str | None = None,
) -> pd.DataFrame:
    """Stored snapshots from ``start`` to ``end`` (inclusive) as a typed pandas DataFrame.

    ``provider`` selects one provider (``'*'`` for the all-provider rows); None returns all.
    Uses DATABASE_URL (or the embedded Postgres) unless ``database_url`` is given. Works from
    plain scripts and from notebooks whose event loop is already running.
    """

    async def go() -> pd.DataFrame:
        async with Database(database_url, min_size=1, max_size=1) as db:
            return await aload(db, start, end, provider)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(go())
    # A running loop (Jupyter): asyncio.run would refuse, so use a loop in a worker thread.
    result: dict[str, Any] = {}

    def worker() -> None:
        try:
            result["frame"] = asyncio.run(go())
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=worker, name="mailpipe-snapshots-load")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["frame"]
