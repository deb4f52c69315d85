"""The suppression list: addresses and whole domains mail must not go to, with a reason."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from mailpipe.db import Database, Row
from mailpipe.errors import MailpipeError
from mailpipe.queries import query

REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual", "soft_bounce")


class InvalidSuppression(MailpipeError):
    """A suppression entry is malformed (not an address nor a domain, unknown reason)."""


def normalise_entry(entry: str) -> tuple[str, str]:
    """``("user@example.com", "address")`` or ``("example.com", "domain")``, lower-cased."""
    value = entry.strip().lower()
    if not value or any(c.isspace() or ord(c) < 32 for c in value) or value.count("@") > 1:
        raise InvalidSuppression(
            f"{entry!r} is neither an address (user@example.com) nor a domain (example.com)"
        )
    if "@" in value:
        local, _, domain = value.partition("@")
        if not local or "." not in domain:
            raise InvalidSuppression(f"{entry!r} is not a valid address")
        return value, "address"
    if "." not in value:
        raise InvalidSuppression(f"{entry!r} is not a domain (example.com)")
    return value, "domain"


async def find_suppressed(db: Database, addresses: Iterable[str]) -> dict[str, str]:
    """For each suppressed address among ``addresses``: why ("hard_bounce", ...)."""
    addresses = {a.lower() for a in addresses}
    if not addresses:
        return {}
    domains = {a.rpartition("@")[2] for a in addresses}
    rows = await db.fetch_all(query("active_suppressions"), (sorted(addresses | domains),))
    by_entry = {r["address"]: r for r in rows}
    found = {}
    for address in addresses:
        hit = by_entry.get(address) or by_entry.get(address.rpartition("@")[2])
        if hit:
            scope = "address" if hit["kind"] == "address" else f"domain {hit['address']}"
            found[address] = f"{hit['reason']} ({scope})"
    return found


async def add_suppressions(
    db: Database,
    entries: Iterable[str],
    *,
    reason: str,
    source: str = "manual",
    expires_at: dt.datetime | None = None,
) -> int:
    """Suppress addresses or domains; returns how many new entries were added."""
    if reason not in REASONS:
        raise InvalidSuppression(f"reason must be one of {', '.join(REASONS)}, not {reason!r}")
    normalised = [normalise_entry(e) for e in entries]
    if not normalised:
        return 0
    return await db.execute(
        query("add_suppressions"),
        {
            "addresses": [a for a, _ in normalised],
            "kinds": [k for _, k in normalised],
            "reasons": [reason] * len(normalised),
            "sources": [source] * len(normalised),
            "expires_at": [expires_at] * len(normalised),
        },
    )


async def remove_suppression(db: Database, entry: str) -> bool:
    """Remove one address or domain; False when it was not suppressed."""
    value, _ = normalise_entry(entry)
    return await db.execute("DELETE FROM email_suppressions WHERE address = %s", (value,)) > 0


async def list_suppressions(
    db: Database, *, include_expired: bool = False, limit: int = 1000
) -> list[Row]:
    """Suppression entries, newest first."""
    return await db.fetch_all(
        "SELECT address, kind, reason, source, created_at, expires_at FROM email_suppressions"
        " WHERE %s OR expires_at IS NULL OR expires_at > now()"
        " ORDER BY created_at DESC, address LIMIT %s",
        (include_expired, limit),
    )
