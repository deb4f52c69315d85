"""Fixtures of the deliverer tests: a provider and a template on the test's database."""

from __future__ import annotations

import pytest

from mailpipe.db import Database
from mailpipe.testing.smtpd import SMTPTestServer
from tests.factories import add_provider, add_template


@pytest.fixture
async def ready(db: Database, smtpd: SMTPTestServer) -> Database:
    """One healthy provider (the test's smtpd) and a welcome template."""
    await add_provider(db, "primary", smtpd)
    await add_template(db)
    return db
