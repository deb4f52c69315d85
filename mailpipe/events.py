"""What mailpipe publishes to Prefect: events (alerts, provider status) and artifact tables.

The one place that imports ``prefect.events``; Prefect is imported only when an event is sent,
so the domain package stays importable without it. Prefect Automations act on the events.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailpipe.monitoring import StatusChange


def emit(event: str, resource: dict[str, str], payload: dict[str, Any] | None = None) -> bool:
    """Send one event to the Prefect API; False when no events client is configured."""
    from prefect.events import emit_event

    return emit_event(event=event, resource=resource, payload=payload or {}) is not None


def emit_provider_changes(changes: Sequence[StatusChange]) -> int:
    """``mailpipe.provider.suspended`` / ``mailpipe.provider.recovered`` per change."""
    for change in changes:
        emit(
            f"mailpipe.provider.{change.kind}",
            resource={
                "prefect.resource.id": f"mailpipe.smtp-provider.{change.provider_name}",
                "prefect.resource.name": change.provider_name,
                "mailpipe.provider.status": change.after,
            },
            payload={
                "before": change.before,
                "after": change.after,
                "suspended_until": change.suspended_until.isoformat()
                if change.suspended_until
                else None,
            },
        )
    return len(changes)


def table_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows a Prefect table artifact can serialise: datetimes as ISO 8601 text."""
    return [{key: _cell(value) for key, value in row.items()} for row in rows]


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
