"""Fixtures for adopting the app's database: the app's shape before and after the seed's
hardening (cloned per test from templates on the test Postgres), a database of an unknown shape,
and a Debian Postgres with real pg_cron running the seed's four jobs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailpipe.db import admin_execute, with_database_name
from tests.adoption.cluster import CRON_DATABASE, CronCluster, find_pg_cron_bindir
from tests.adoption.cluster import start_cron_cluster as _start

HERE = Path(__file__).parent
APP_SCHEMA = (HERE / "app_schema.sql").read_text(encoding="utf-8")
SEED_HARDENING = (HERE / "app_seed_hardening.sql").read_text(encoding="utf-8")
NET_STUB = (HERE / "net_stub.sql").read_text(encoding="utf-8")
APP_CRON = (HERE / "app_cron.sql").read_text(encoding="utf-8")

SEED_JOBS = (
    "process_email_queue",
    "monitor_smtp_health",
    "monitor_email_production",
    "snapshot_email_health",
)

# A shape preflight must not recognise: an outbox of another product.
UNKNOWN_SHAPE = """
CREATE TABLE communication_events (
    event_id   bigserial PRIMARY KEY,
    channel    text NOT NULL,
    body       text,
    state      smallint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE smtp_provider_configs (
    slug    text PRIMARY KEY,
    dsn     text NOT NULL
);
INSERT INTO communication_events (channel, body) VALUES ('sms', 'hello');
"""


def app_sql(*, hardened: bool) -> list[str]:
    """The statements that build the app's shape, before or after the seed's hardening."""
    return [APP_SCHEMA, SEED_HARDENING] if hardened else [APP_SCHEMA]


@pytest.fixture(scope="session")
def app_templates(postgres_url: str) -> dict[str, str]:
    """Template databases of the app's shape, built once: ``{"before": name, "after": name}``."""
    names = {"before": "adopt_app_before_template", "after": "adopt_app_after_template"}
    for variant, name in names.items():
        admin_execute(
            postgres_url,
            [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"],
        )
        admin_execute(with_database_name(postgres_url, name), app_sql(hardened=variant == "after"))
    return names


def _clone(postgres_url: str, template: str) -> Iterator[str]:
    name = f"adopt_{uuid.uuid4().hex[:12]}"
    admin_execute(postgres_url, [f"CREATE DATABASE {name} TEMPLATE {template}"])
    yield with_database_name(postgres_url, name)
    admin_execute(postgres_url, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])


@pytest.fixture
def app_before_url(postgres_url: str, app_templates: dict[str, str]) -> Iterator[str]:
    """A database of the app's shape before the seed's hardening (no pg_cron)."""
    yield from _clone(postgres_url, app_templates["before"])


@pytest.fixture
def app_after_url(postgres_url: str, app_templates: dict[str, str]) -> Iterator[str]:
    """A database of the app's shape after the seed's hardening (no pg_cron)."""
    yield from _clone(postgres_url, app_templates["after"])


@pytest.fixture
def unknown_shape_url(empty_database_url: str) -> str:
    """A database whose tables carry mailpipe's names but neither mailpipe's nor the app's shape."""
    admin_execute(empty_database_url, [UNKNOWN_SHAPE])
    return empty_database_url


@pytest.fixture(scope="session")
def pg_cron_cluster() -> Iterator[CronCluster]:
    """A Debian Postgres with pg_cron preloaded, its extension created in ``app_cron``."""
    bindir = find_pg_cron_bindir()
    if bindir is None:
        pytest.skip(
            "pg_cron not found: no /usr/lib/postgresql/<ver>/bin/initdb with lib/pg_cron.so "
            "(Debian: run scripts/install-pg-cron.sh)"
        )
    cluster = _start(bindir)
    try:
        admin_execute(cluster.url(), [f"CREATE DATABASE {CRON_DATABASE}"])
        # As Supabase does: the extension in pg_catalog (its objects in schema cron), so
        # rebuilding public between tests keeps it.
        admin_execute(
            cluster.url(CRON_DATABASE), ["CREATE EXTENSION pg_cron WITH SCHEMA pg_catalog"]
        )
        cluster.wait_for_scheduler(CRON_DATABASE)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cron_app_url(pg_cron_cluster: CronCluster) -> str:
    """The app (before hardening) in pg_cron's database, with net stubbed and the seed's four
    jobs scheduled: rebuilt for each test (pg_cron runs jobs in one database only)."""
    url = pg_cron_cluster.url(CRON_DATABASE)
    admin_execute(
        url,
        [
            "SELECT cron.unschedule(jobid) FROM cron.job",
            "DROP SCHEMA IF EXISTS auth CASCADE",
            "DROP SCHEMA IF EXISTS net CASCADE",
            "DROP SCHEMA IF EXISTS public CASCADE",
            "CREATE SCHEMA public",
            "GRANT ALL ON SCHEMA public TO PUBLIC",
            APP_SCHEMA,
            NET_STUB,
            APP_CRON,
        ],
    )
    return url


@pytest.fixture
def pg_net_worker(cron_app_url: str) -> Iterator[None]:
    """Stand-in for pg_net's background worker: makes (deletes) every queued HTTP call.

    The seed's jobs really run: a job firing at a minute boundary during a test queues a call
    through the stub, and with no worker that call would stay in flight forever.
    """
    stop = threading.Event()

    def work() -> None:
        while not stop.wait(0.05):
            admin_execute(cron_app_url, ["DELETE FROM net.http_request_queue"])

    thread = threading.Thread(target=work, name="pg_net-worker", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
