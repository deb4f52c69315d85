"""The one duration grammar (settings, flow parameters, CLI options) and the whole-number check."""

from __future__ import annotations

import datetime as dt

import pytest

from mailpipe.errors import ConfigError
from mailpipe.values import is_duration, is_int, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", dt.timedelta(seconds=30)),
        (" 5m ", dt.timedelta(minutes=5)),
        ("1h", dt.timedelta(hours=1)),
        ("90d", dt.timedelta(days=90)),
        ("2w", dt.timedelta(weeks=2)),
    ],
)
def test_durations_parse(text: str, expected: dt.timedelta) -> None:
    assert is_duration(text)
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", None, "5", "0m", "1y", "-5m", "m5", "1.5h", "5 minutes"])
def test_a_bad_duration_names_what_it_was_for(text: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(text, "--older-than")
    assert str(caught.value) == f"--older-than {text!r} is not a duration like 30s, 5m, 1h or 7d"


def test_a_duration_too_long_for_a_timedelta_is_refused_in_words() -> None:
    assert is_duration("99999999999999w")
    with pytest.raises(ConfigError, match="'99999999999999w' is too long a duration"):
        parse_duration("99999999999999w", "--for")


def test_only_whole_numbers_are_ints() -> None:
    assert is_int(0) and is_int(-3) and is_int(2**70)
    assert not any(is_int(v) for v in (True, False, 1.0, "1", None))
