"""Plain values read from people and settings: durations written ``30s``, ``5m``, ``1h``, ``7d``
or ``2w`` (one parser for settings, flow parameters and the command line), and whole numbers."""

from __future__ import annotations

import datetime as dt
import re
import uuid
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


EventId = int | uuid.UUID
"""A communication_events id: bigint on mailpipe's own databases, uuid on the adopted app's."""


def parse_event_id(text: str, id_type: str) -> EventId:
    """An event id typed on the command line, as the database's id type (``bigint``,
    ``integer`` or ``uuid``); :class:`ConfigError` says what was expected otherwise."""
    text = text.strip()
    if id_type in ("bigint", "integer", "smallint"):
        if re.fullmatch(r"\d+", text):
            return int(text)
        raise ConfigError(f"--id {text!r}: event ids are whole numbers in this database")
    if id_type == "uuid":
        try:
            return uuid.UUID(text)
        except ValueError:
            raise ConfigError(
                f"--id {text!r}: event ids are UUIDs in this database "
                "(e.g. 6f1c7c3e-2b47-4a51-9b3e-2c1d0e8f9a10)"
            ) from None
    raise ConfigError(f"communication_events.id is {id_type}: mailpipe reads bigint or uuid ids")
