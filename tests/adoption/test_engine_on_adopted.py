"""mailpipe's own engine tests, run again on an adopted app database (uuid ids, enum status,
text priority, the app's triggers live): the same test functions, another ``database_url``.

The database is a clone of a template built once: the app's shape after the seed's hardening
(the harder of the two), adopted, then emptied of the app's rows so the tests start from the
same empty outbox as on mailpipe's own database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from mailpipe.adoption.adopt import adopt
from mailpipe.db import Database, admin_execute, with_database_name
from tests.adoption.conftest import app_sql
from tests.deliverer.test_deliverer import (  # noqa: F401
    test_a_notification_delivers_at_once_without_any_flow_run,
    test_a_priority_event_is_not_held_up_by_a_bulk_burst,
)
from tests.test_cli_queue import (  # noqa: F401
    test_cancel,
    test_retry_leaves_processing_and_locked_rows_alone,
)
from tests.test_delivery import (  # noqa: F401
    ready,
    test_4xx_is_retried_with_backoff,
    test_550_on_rcpt_is_a_hard_bounce_and_suppresses,
    test_expired_lease_is_rescued_and_sent,
    test_priority_order_then_schedule,
    test_sends_and_confirms,
)
from tests.test_quality import test_seeded_database_passes_every_suite  # noqa: F401
from tests.test_snapshots import test_busy_day_exact_numbers, traffic  # noqa: F401

ADOPTED_TEMPLATE = "adopt_adopted_template"

# The app's rows go (their own tests are in test_adopt.py); its schema, triggers and
# policies stay.
EMPTY_APP = """
TRUNCATE communication_events, communication_logs, email_delivery_confirmations,
         email_processing_queue, smtp_provider_configs, smtp_connection_audit,
         smtp_delivery_confirmations, rate_limit_counters, orders, customer_accounts CASCADE
"""


@pytest.fixture(scope="session")
def adopted_template(postgres_url: str) -> str:
    """A template database: the app after the seed's hardening, adopted, emptied."""
    admin_execute(
        postgres_url,
        [
            f"DROP DATABASE IF EXISTS {ADOPTED_TEMPLATE} WITH (FORCE)",
            f"CREATE DATABASE {ADOPTED_TEMPLATE}",
        ],
    )
    url = with_database_name(postgres_url, ADOPTED_TEMPLATE)
    admin_execute(url, app_sql(hardened=True))

    async def build() -> None:
        async with Database(url, min_size=1, max_size=2) as db:
            await adopt(db)

    asyncio.run(build())
    admin_execute(url, [EMPTY_APP])
    return ADOPTED_TEMPLATE


@pytest.fixture
def database_url(postgres_url: str, adopted_template: str) -> Iterator[str]:
    """This module's tests run on a clone of the adopted app database."""
    name = f"adopt_engine_{uuid.uuid4().hex[:12]}"
    admin_execute(postgres_url, [f"CREATE DATABASE {name} TEMPLATE {adopted_template}"])
    yield with_database_name(postgres_url, name)
    admin_execute(postgres_url, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])


async def test_the_clone_is_the_adopted_app(database_url: str) -> None:
    async with Database(database_url, min_size=1, max_size=1) as db:
        id_type = await db.fetch_value(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'communication_events'::regclass AND attname = 'id'"
        )
        priority = await db.fetch_value(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = 'communication_events' AND column_name = 'priority'"
        )
    assert (id_type, priority) == ("uuid", "text")
