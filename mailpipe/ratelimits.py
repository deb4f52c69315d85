"""Send quotas per provider and per recipient domain, shared by every worker through Postgres."""

from __future__ import annotations

import datetime as dt

from mailpipe.db import Database
from mailpipe.queries import query

WINDOWS = ("minute", "hour", "day")  # the lock order used by reserve_send_quota
_LENGTH = {
    "minute": dt.timedelta(minutes=1),
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(days=1),
}


async def reserve(db: Database, scope: str, key: str, limits: dict[str, int], wanted: int) -> int:
    """Take up to ``wanted`` sends from every configured window; returns how many it got.

    One atomic statement: concurrent workers never exceed a limit together. What is not
    granted is counted as deferred in the window's row (monitoring alerts on it).
    """
    if wanted <= 0:
        return 0
    if not limits:
        return wanted
    windows = [w for w in WINDOWS if w in limits]
    return int(
        await db.fetch_value(
            query("reserve_send_quota"),
            {
                "scope": scope,
                "key": key,
                "windows": windows,
                "limits": [limits[w] for w in windows],
                "wanted": wanted,
            },
        )
    )


def next_window_start(limits: dict[str, int], now: dt.datetime) -> dt.datetime:
    """When a deferred send may try again: the start of the next smallest limited window."""
    window = next((w for w in WINDOWS if w in limits), "minute")
    if window == "minute":
        start = now.replace(second=0, microsecond=0)
    elif window == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
    else:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start + _LENGTH[window]
