"""Plain values read from people and settings: durations written ``30s``, ``5m``, ``1h``, ``7d``
or ``2w`` (one parser for settings, flow parameters and the command line), and whole numbers."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from mailpipe.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def is_duration(text: str | None) -> bool:
    """Whether ``text`` is written like a duration (``10m``), whatever its size."""
    return _DURATION.match(text or "") is not None


def parse_duration(text: str | None, what: str = "duration") -> dt.timedelta:
    """``"90d"`` -> 90 days: a positive whole number and a unit (s, m, h, d, w).

    Raises :class:`ConfigError` naming ``what`` (a setting, a parameter or an option) otherwise.
    """
    match = _DURATION.match(text or "")
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"{what} {text!r} is not a duration like 30s, 5m, 1h or 7d")
    try:
        return dt.timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    except OverflowError:
        raise ConfigError(f"{what} {text!r} is too long a duration") from None


def is_int(value: Any) -> bool:
    """Whether ``value`` is a whole number (``True`` is an ``int`` in Python, not here)."""
    return isinstance(value, int) and not isinstance(value, bool)
