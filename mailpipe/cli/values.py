"""Parsing what operators type into options: durations, times, JSON, files, ``key=value``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from mailpipe.errors import MailpipeError
from mailpipe.values import is_duration, parse_duration


class BadOption(MailpipeError):
    """An option's value cannot be used; the message names the option and the fix."""


def duration(option: str, text: str) -> dt.timedelta:
    """``"90d"`` -> 90 days (units s, m, h, d, w), by :func:`mailpipe.values.parse_duration`;
    an error names ``option``."""
    return parse_duration(text, option)


def moment(option: str, text: str) -> dt.datetime:
    """A time: ISO 8601 with a timezone (2026-01-01T09:00:00+00:00, ...Z), or a delay from
    now (``10m``)."""
    if is_duration(text):
        try:
            return dt.datetime.now(dt.UTC) + duration(option, text)
        except OverflowError:
            raise BadOption(f"{option} {text!r} is too far in the future") from None
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise BadOption(
            f"{option} {text!r} is neither an ISO 8601 time "
            "(2026-01-01T09:00:00+00:00) nor a delay like 10m"
        ) from None
    if value.tzinfo is None:
        raise BadOption(f"{option} {text!r} has no timezone: add one, e.g. {text}+00:00")
    return value


def json_object(option: str, text: str) -> dict[str, Any]:
    """A JSON object, e.g. ``{"name": "Ann"}``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadOption(
            f"{option} is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f'{exc.colno}): pass an object like \'{{"name": "Ann"}}\''
        ) from None
    if not isinstance(value, dict):
        raise BadOption(
            f'{option} must be a JSON object like \'{{"name": "Ann"}}\', not '
            f"a {type(value).__name__}"
        )
    return value


def read_text(option: str, path: Path) -> str:
    """A UTF-8 text file's content ("-" is not supported: templates are files)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadOption(f"{option} {str(path)!r}: no such file") from None
    except IsADirectoryError:
        raise BadOption(f"{option} {str(path)!r} is a directory: give a file") from None
    except PermissionError:
        raise BadOption(f"{option} {str(path)!r}: permission denied") from None
    except UnicodeDecodeError:
        raise BadOption(
            f"{option} {str(path)!r} is not UTF-8 text: convert it (e.g. iconv -t utf-8)"
        ) from None
    except OSError as exc:
        raise BadOption(f"{option} {str(path)!r} cannot be read: {exc.strerror}") from None


def text_or_file(option: str, text: str | None, path: Path | None) -> str | None:
    """The value of ``--x TEXT`` or ``--x-file PATH`` (not both); None when neither."""
    if text is not None and path is not None:
        raise BadOption(f"give {option} or {option}-file, not both")
    if path is not None:
        return read_text(f"{option}-file", path)
    return text


def key_values(option: str, items: list[str] | None) -> dict[str, Any]:
    """``["batch_size=50", "windows=[\\"5m\\"]"]`` -> values parsed as JSON where they are
    JSON, else kept as text (``start=2026-01-01``)."""
    parsed: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadOption(f"{option} {item!r} is not key=value (e.g. {option} batch_size=50)")
        try:
            parsed[key] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key] = raw
    return parsed


def optional_limit(option: str, text: str | None) -> int | None:
    """A send limit: a whole number, or ``none`` for no limit."""
    if text is None or text.strip().lower() in ("none", "off", "unlimited"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadOption(
            f"{option} {text!r} is not a whole number (or 'none' for no limit)"
        ) from None
    if value < 0:
        raise BadOption(f"{option} {value} must be 0 or more (or 'none' for no limit)")
    return value
