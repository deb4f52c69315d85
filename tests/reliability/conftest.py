"""Fixtures of the reliability tier: the test's own connections kept apart from the drainers',
the figures of the run, and drainer processes that are always cleaned up."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from mailpipe.db import Database
from tests.reliability.support import DrainerProcess, Figures

# The test's own pool is named apart from the engine's ("mailpipe"), so a suite can
# pg_terminate_backend every drainer connection by application_name and keep its own.
TEST_APPLICATION = "mailpipe-reliability-test"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """An open pool on this test's database, under the application name of the test."""
    async with Database(
        database_url, min_size=1, max_size=4, application_name=TEST_APPLICATION
    ) as database:
        yield database


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    """Record measured numbers; written to $RELIABILITY_FIGURES at the end of the session."""
    yield _FIGURES
    path = os.environ.get("RELIABILITY_FIGURES")
    if path and _FIGURES.rows:
        _FIGURES.write(path)


@pytest.fixture
def drainers() -> Iterator[Callable[..., DrainerProcess]]:
    """Start drainer processes: ``drainers(url, batch_size=..., env={...})``; killed at the end."""
    started: list[DrainerProcess] = []

    def start(url: str, **kwargs: object) -> DrainerProcess:
        process = DrainerProcess(url, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
