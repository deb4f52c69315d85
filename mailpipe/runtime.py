"""What a flow run needs from Prefect: Secret blocks, events, artifacts, the run's logger and id,
and the late-run guard.

The one module of the domain's side that imports Prefect, always lazily inside a function, so
``mailpipe`` stays importable (and fast to import) without it. Deployment machinery (the project
file, setup, serve, up) lives in :mod:`mailpipe.deploy`; flows live in ``flows/``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mailpipe.errors import ConfigError
from mailpipe.serialization import to_jsonable

if TYPE_CHECKING:
    from mailpipe.monitoring import StatusChange

log = logging.getLogger(__name__)


# --- Secret blocks ----------------------------------------------------------------------------


def _secret_block_error(name: str, purpose: str, exc: BaseException) -> ConfigError:
    # One text for every Secret block mailpipe reads; it never contains the value.
    return ConfigError(
        f"{purpose}: Prefect Secret block {name!r} cannot be loaded ({type(exc).__name__}); "
        "create it with `mailpipe setup prefect` (or `prefect block create secret`) on the "
        "Prefect API this process uses, or configure the value on this machine instead"
    )


def read_secret_block(name: str, *, purpose: str) -> str:
    """The value of a Prefect Secret block, loaded synchronously (also inside an event loop).

    ``purpose`` says who asked (a setting, a provider), for the error. Nothing falls back to a
    default: a missing block is a configuration error (:class:`ConfigError`).
    """
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(name, _sync=True).get()
    except Exception as exc:
        raise _secret_block_error(name, purpose, exc) from None
    return str(value)


async def aread_secret_block(name: str, *, purpose: str) -> str:
    """:func:`read_secret_block` for async callers."""
    try:
        from prefect.blocks.system import Secret

        secret = await Secret.aload(name)
        value = secret.get()
    except Exception as exc:
        raise _secret_block_error(name, purpose, exc) from None
    return str(value)


async def upsert_secret_block(name: str, value: str) -> str:
    """Create or update a Prefect Secret block; returns ``created``, ``updated`` or
    ``unchanged``. The one writer of Secret blocks (setup and `provider adopt` use it)."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_block_document_by_name(name, block_type_slug="secret")
        except ObjectNotFound:
            await Secret(value=value).asave(name)
            return "created"
    current = await Secret.aload(name)
    if current.get() == value:
        return "unchanged"
    await Secret(value=value).asave(name, overwrite=True)
    return "updated"


# --- events -----------------------------------------------------------------------------------


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


# --- artifacts, logger, run id ----------------------------------------------------------------


def table_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows a Prefect table artifact can serialise (ISO dates, plain numbers, text)."""
    return [{str(k): to_jsonable(v) for k, v in row.items()} for row in rows]


async def publish_markdown_artifact(key: str, markdown: str, description: str) -> None:
    """A markdown artifact on the current flow run (keys: lowercase letters, digits, dashes)."""
    from prefect.artifacts import acreate_markdown_artifact

    await acreate_markdown_artifact(key=key, markdown=markdown, description=description)


async def publish_table_artifact(
    key: str, rows: Iterable[Mapping[str, Any]], description: str
) -> None:
    """A table artifact on the current flow run."""
    from prefect.artifacts import acreate_table_artifact

    await acreate_table_artifact(key=key, table=table_rows(rows), description=description)


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The current flow or task run's logger (its lines reach the Prefect UI), else ours."""
    try:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            return log
    except ImportError:  # pragma: no cover - prefect is a dependency
        return log


def current_flow_run_id() -> str | None:
    """The id of the flow run this code runs in, or None outside one."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


# --- late runs --------------------------------------------------------------------------------


def run_lateness(now: dt.datetime | None = None) -> dt.timedelta:
    """How long after its scheduled time the current flow run is running (zero outside runs)."""
    from prefect.runtime import flow_run

    now = now or dt.datetime.now(dt.UTC)
    scheduled = flow_run.scheduled_start_time
    return max(now - scheduled, dt.timedelta(0))


def skip_if_late(max_late: dt.timedelta, *, now: dt.datetime | None = None) -> str | None:
    """Why the current run should not do its work, or None to go on.

    For flows whose work is only worth doing now (the monitors): a run that starts more than
    ``max_late`` after its slot (a worker came back after downtime and found old scheduled runs)
    returns early, and the next on-time run measures the present instead. The flow logs the
    reason and returns it; the run still completes. Runs started by hand are never late.
    """
    late = run_lateness(now)
    if late <= max_late:
        return None
    return (
        f"skipped: started {late.total_seconds():.0f} s after its scheduled time "
        f"(more than {max_late.total_seconds():.0f} s late); the next run catches up"
    )
