"""Shared fixtures: a real Postgres (embedded unless MAILPIPE_TEST_DATABASE_URL is set) with a
migrated template database cloned per test, and real in-process SMTP servers."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailpipe.config import get_settings
from mailpipe.db import Database, admin_execute, with_database_name
from mailpipe.migrations import migrate
from mailpipe.testing.smtpd import Behaviour, Certificate, SMTPTestServer, make_certificate

TEMPLATE_DB = "mailpipe_test_template"

# Prefect reads these at import: keep the developer's ~/.prefect out, and keep runs quiet.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="mailpipe-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.pop("PREFECT_API_URL", None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--heavy",
        action="store_true",
        default=False,
        help="run the heavy sizes of the reliability suites",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--heavy"):
        return
    skip = pytest.mark.skip(reason="heavy size: run with --heavy")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep a developer's DATABASE_URL, .env or data folder out of the tests."""
    keep = {"MAILPIPE_TEST_DATABASE_URL"}
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k == "DATABASE_URL" or (k.startswith("MAILPIPE_") and k not in keep)
    }
    os.environ["MAILPIPE_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    get_settings.cache_clear()
    yield
    os.environ.pop("MAILPIPE_DATA_DIR", None)
    os.environ.update(saved)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin URL of the test server: MAILPIPE_TEST_DATABASE_URL, else an embedded Postgres."""
    url = os.environ.get("MAILPIPE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from mailpipe.embedded import get_server

    server = get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def template_url(postgres_url: str) -> str:
    """A database migrated once per session; each test gets a clone of it."""
    admin_execute(
        postgres_url,
        [f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)", f"CREATE DATABASE {TEMPLATE_DB}"],
    )
    url = with_database_name(postgres_url, TEMPLATE_DB)

    async def build() -> None:
        async with Database(url, min_size=1, max_size=1) as db:
            await migrate(db)

    asyncio.run(build())
    return url


@pytest.fixture
def database_url(postgres_url: str, template_url: str) -> Iterator[str]:
    """A fresh, fully migrated database for this test (a clone of the template)."""
    name = f"mailpipe_test_{uuid.uuid4().hex[:12]}"
    admin_execute(postgres_url, [f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"])
    yield with_database_name(postgres_url, name)
    admin_execute(postgres_url, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])


@pytest.fixture
def empty_database_url(postgres_url: str) -> Iterator[str]:
    """A database with no migrations applied (for migration tests)."""
    name = f"mailpipe_empty_{uuid.uuid4().hex[:12]}"
    admin_execute(postgres_url, [f"CREATE DATABASE {name}"])
    yield with_database_name(postgres_url, name)
    admin_execute(postgres_url, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """An open connection pool on this test's database."""
    async with Database(database_url, min_size=1, max_size=4) as database:
        yield database


@pytest.fixture
def env_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point mailpipe's settings (CLI, flows) at this test's database through DATABASE_URL."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, for STARTTLS and implicit-TLS servers."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtpd_factory(tls_certificate: Certificate) -> Iterator[Callable[..., SMTPTestServer]]:
    """Start any number of SMTP servers: ``smtpd_factory(Behaviour(...), tls="starttls")``."""
    servers: list[SMTPTestServer] = []

    def start(behaviour: Behaviour | None = None, *, tls: str = "none") -> SMTPTestServer:
        server = SMTPTestServer(behaviour, tls=tls, certificate=tls_certificate).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def smtpd(
    request: pytest.FixtureRequest, smtpd_factory: Callable[..., SMTPTestServer]
) -> SMTPTestServer:
    """One recording SMTP server; ``@pytest.mark.smtpd(data_reply="451 ...")`` configures it."""
    marker = request.node.get_closest_marker("smtpd")
    kwargs = dict(marker.kwargs) if marker else {}
    tls = kwargs.pop("tls", "none")
    return smtpd_factory(Behaviour(**kwargs), tls=tls)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect API (SQLite, local server) for flow tests, started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def prefect_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Capture the Prefect events a flow emits (Prefect's own asserting client)."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker

    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *args, **kwargs: worker)
    yield worker
    worker.drain()
