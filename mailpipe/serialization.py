"""One JSON encoding for everything mailpipe prints, stores or publishes."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: ISO 8601 dates, seconds for durations, floats for
    decimals, None for NaN, text for anything else (uuids, enums, paths)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def dumps(data: Any, *, indent: int | None = None) -> str:
    """JSON text of ``data`` through :func:`to_jsonable` (non-ASCII kept as is)."""
    return json.dumps(to_jsonable(data), indent=indent, ensure_ascii=False)
