"""One way to keep secrets out of logs, errors, artifacts and the UI."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]+")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL (or key=value DSN) with its password replaced by ``***``, safe to print."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
        url = urlunsplit(parts._replace(netloc=netloc))
    return _PASSWORD_PARAM.sub(rf"\1{MASK}", url)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every given secret, and the password of every URL in it, masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _PASSWORD_PARAM.sub(rf"\1{MASK}", text)


def url_password(url: str) -> str | None:
    """The password in a connection URL, if any (to redact it wherever it shows up)."""
    return urlsplit(url).password if "://" in url else None
