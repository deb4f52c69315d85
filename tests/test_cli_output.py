"""What every ``mailpipe`` command prints: tables whole when piped, usage errors in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_support import fails, fetch, invoke, ok

# Longer than an 80-column table can show: rich cut such names to "prim…" when piped.
LONG_NAME = "primary-relay-for-the-transactional-mail-of-the-eu-storefront.eu-west-1"
LONG_HOST = "smtp-relay-with-a-long-hostname.eu-west-1.mail.example.com"


def mailpipe(*args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """``mailpipe ARGS`` as an operator runs it (the console script beside this interpreter),
    its stdout and stderr piped."""
    env = {**os.environ, "COLUMNS": "80"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(Path(sys.executable).with_name("mailpipe")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_a_piped_provider_list_shows_long_names_and_statuses_whole(env_database: str) -> None:
    ok("provider", "add", LONG_NAME, "--host", LONG_HOST, "--priority", "1")
    ok("provider", "add", "backup", "--host", "b.example.com", "--priority", "2")
    ok("provider", "suspend", LONG_NAME, "--for", "30m")

    piped = mailpipe("provider", "list", database_url=env_database)

    assert piped.returncode == 0, piped.stderr
    assert "…" not in piped.stdout, piped.stdout
    [row] = [line for line in piped.stdout.splitlines() if LONG_NAME in line]
    assert f"{LONG_HOST}:587" in row and "suspended" in row, row
    [row] = [line for line in piped.stdout.splitlines() if "backup" in line]
    assert "b.example.com:587" in row and "active" in row, row
    # The in-process runner's stdout is not a terminal either: the same whole rows.
    assert LONG_NAME in invoke("provider", "list").stdout


def test_a_bad_option_value_is_one_line_and_exit_1() -> None:
    piped = mailpipe("provider", "add", "p", "--host", "h.example.com", "--port", "abc")

    assert piped.returncode == 1, piped.stderr
    assert piped.stdout == ""
    lines = piped.stderr.splitlines()
    assert len(lines) == 1, piped.stderr
    assert lines[0].startswith("error: Invalid value for '--port'"), lines
    assert lines[0].endswith("(see `mailpipe provider add --help`)"), lines


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nosuch"], "error: No such command 'nosuch'. (see `mailpipe --help`)"),
        (["provider", "lst"], "error: No such command 'lst'. Did you mean 'list'?"),
        (["enqueue", "--template", "welcome"], "error: Missing option '--to'."),
        (["template", "add"], "error: Missing argument 'key'."),
        (["queue", "list", "--no-such-flag"], "error: No such option: --no-such-flag"),
        (["provider", "list", "--json", "extra"], "error: Got unexpected extra argument"),
    ],
)
def test_usage_errors_are_one_line_and_exit_1(args: list[str], expected: str) -> None:
    assert fails(*args).startswith(expected)


def test_an_unknown_command_through_the_console_script_is_one_line() -> None:
    piped = mailpipe("nosuch")

    assert (piped.returncode, piped.stdout) == (1, "")
    assert piped.stderr == "error: No such command 'nosuch'. (see `mailpipe --help`)\n"


@pytest.mark.parametrize("args", [["--help"], ["provider", "--help"], ["queue", "purge", "--help"]])
def test_help_still_exits_0(args: list[str]) -> None:
    result = invoke(*args)

    assert result.exit_code == 0, result.output
    assert "Usage: mailpipe" in result.stdout
    assert result.stderr == ""


def test_a_group_without_a_command_shows_its_help_and_exits_1() -> None:
    result = invoke("provider")

    assert result.exit_code == 1, result.output
    assert "Usage: mailpipe provider" in result.stdout
    assert "list" in result.stdout


def test_a_question_left_unanswered_is_one_line_and_changes_nothing(env_database: str) -> None:
    ok("provider", "add", "p", "--host", "h.example.com")

    result = invoke("provider", "remove", "p", input="")  # stdin closed before an answer

    assert result.exit_code == 1, result.output
    assert result.stderr == "error: aborted: no answer was read; pass --yes to skip the question\n"
    assert len(fetch(env_database, "SELECT * FROM smtp_provider_configs")) == 1
