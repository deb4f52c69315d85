"""Which Prefect API this process talks to, whether it answers, and its errors in one line."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from mailpipe.deploy import OrchestrationError
from mailpipe.errors import ConfigError

STARTUP_TIMEOUT_SECONDS = 120.0


def configured_api_url() -> str | None:
    """The Prefect API this process talks to (PREFECT_API_URL or the active profile)."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def require_api() -> str:
    """The configured Prefect API URL; without one Prefect would start a throwaway server."""
    url = configured_api_url()
    if not url:
        raise ConfigError(
            "no Prefect API configured: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api "
            "after `prefect server start`), or run `mailpipe up`, which starts one"
        )
    return url


@contextlib.contextmanager
def prefect_api_errors(url: str) -> Iterator[None]:
    """Turn HTTP failures talking to Prefect into one line (status only: a response body
    could echo a secret that was being saved)."""
    import httpx

    try:
        yield
    except httpx.HTTPStatusError as exc:
        raise OrchestrationError(
            f"the Prefect API at {url} refused a request ({exc.response.status_code} for "
            f"{exc.request.method} {exc.request.url.path})"
        ) from None
    except httpx.HTTPError as exc:
        raise OrchestrationError(
            f"cannot reach the Prefect API at {url} ({type(exc).__name__}); is the server "
            "running? (`prefect server start`, or `mailpipe up`)"
        ) from None


def is_healthy(api_url: str, *, timeout: float = 2.0) -> bool:
    """Whether the API at ``api_url`` answers ``/health`` now."""
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_healthy(
    api_url: str,
    *,
    timeout: float = STARTUP_TIMEOUT_SECONDS,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Poll ``/health`` until the API answers; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not alive():
            raise OrchestrationError(f"the Prefect server at {api_url} exited while starting")
        if is_healthy(api_url):
            return time.monotonic() - started
        time.sleep(0.1)
    raise OrchestrationError(
        f"the Prefect server at {api_url} did not answer within {timeout:.0f} s"
    )
