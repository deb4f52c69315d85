"""Which failures are worth a Prefect task retry: read from the exception type, never a string."""

from __future__ import annotations

from typing import Any

from mailpipe.errors import TransientError


def is_transient(exc: BaseException | None) -> bool:
    """A :class:`~mailpipe.errors.TransientError` may succeed on a retry: a lost database
    connection (``DatabaseUnavailable``), an SMTP 4xx, timeout or dropped connection. Bugs and
    bad data (anything else) will not."""
    return isinstance(exc, TransientError)


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient failures (not bugs, not bad data)."""
    # Prefect hands a task's exception over as the Failed state's data; reading the result
    # instead would be a blocking call inside async tasks.
    exc = state.data if isinstance(state.data, BaseException) else None
    return is_transient(exc)
