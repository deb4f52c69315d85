"""`mailpipe provider adopt`: the app's plaintext SMTP passwords move to Secret blocks or env
vars, credentials keep references, and --finalize leaves no password in the database."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from mailpipe.adoption.adopt import adopt
from mailpipe.adoption.preflight import preflight
from mailpipe.adoption.secrets import adopt_provider_secrets, finalize_provider_secrets
from mailpipe.db import Database
from mailpipe.errors import ConfigError, MailpipeError
from mailpipe.runtime import read_secret_block
from tests.adoption.test_adopt import fingerprint

PLAINTEXT = ("fixture-plaintext-1", "fixture-plaintext-2", "fixture-plaintext-3")
ENV = {"primary-smtp": "PRIMARY_SMTP_PASSWORD", "backup-smtp": "BACKUP_SMTP_PASSWORD"}


@pytest.fixture(params=["before", "after"])
async def adopted_url(request: pytest.FixtureRequest) -> str:
    """The app's database (before, then after, the seed's hardening), adopted."""
    url = request.getfixturevalue(f"app_{request.param}_url")
    async with Database(url, min_size=1, max_size=2) as db:
        await adopt(db)
    return url


def providers(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute(
            "SELECT provider_name, password_encrypted, credentials FROM smtp_provider_configs"
        ).fetchall()
    return {r["provider_name"]: r for r in rows}


def plaintext_anywhere(url: str) -> list[str]:
    """Every provider row whose text (any column) contains one of the fixture's passwords."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT provider_name FROM smtp_provider_configs p"
            " WHERE to_jsonb(p)::text ~ %s ORDER BY 1",
            ("|".join(PLAINTEXT),),
        ).fetchall()
    return [r[0] for r in rows]


async def test_env_references_then_finalize_leave_no_password(
    adopted_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Database(adopted_url, min_size=1, max_size=2) as db:
        # --finalize first: refused, nothing changed.
        shape, before = fingerprint(adopted_url), providers(adopted_url)
        with pytest.raises(MailpipeError, match="refused, nothing changed.*primary-smtp"):
            await finalize_provider_secrets(db)
        assert (fingerprint(adopted_url), providers(adopted_url)) == (shape, before)

        # A variable that does not hold the password: refused without printing either value.
        monkeypatch.setenv(ENV["primary-smtp"], "not-the-password")
        monkeypatch.setenv(ENV["backup-smtp"], "fixture-plaintext-2")
        with pytest.raises(ConfigError, match="does not hold the password") as refused:
            await adopt_provider_secrets(db, password_env=ENV)
        assert not any(p in str(refused.value) for p in (*PLAINTEXT, "not-the-password"))
        assert providers(adopted_url)["primary-smtp"] == before["primary-smtp"]

        monkeypatch.setenv(ENV["primary-smtp"], "fixture-plaintext-1")
        result = await adopt_provider_secrets(db, password_env=ENV)
        assert {m.provider: m.reference for m in result.moved} == {
            name: {"password_env": variable} for name, variable in ENV.items()
        }
        # The app's edge functions still read password_encrypted until --finalize.
        kept = providers(adopted_url)
        assert kept["primary-smtp"]["password_encrypted"] == "fixture-plaintext-1"
        assert kept["backup-smtp"]["credentials"] == {"password_env": ENV["backup-smtp"]}
        again = await adopt_provider_secrets(db, password_env=ENV)
        assert again.moved == []  # idempotent

        done = await finalize_provider_secrets(db)
        assert sorted(done.cleared) == ["backup-smtp", "primary-smtp"] and done.finalized
        assert plaintext_anywhere(adopted_url) == []
        report = await preflight(db)
    assert report.go, report.blockers

    with psycopg.connect(adopted_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "UPDATE smtp_provider_configs SET password_encrypted = 'again'"
                " WHERE provider_name = 'primary-smtp'"
            )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                'UPDATE smtp_provider_configs SET credentials = \'{"password": "x"}\''
                " WHERE provider_name = 'primary-smtp'"
            )


async def test_the_analyst_cannot_read_credentials(adopted_url: str) -> None:
    with psycopg.connect(adopted_url, autocommit=True) as conn:
        conn.execute("SET ROLE mailpipe_analyst")
        assert conn.execute("SELECT count(*) FROM smtp_provider_configs").fetchone() is not None
        assert conn.execute("SELECT provider_name, host FROM smtp_provider_configs").fetchall()
        for column in ("password_encrypted", "credentials"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT {column} FROM smtp_provider_configs")


async def test_passwords_move_to_secret_blocks(app_after_url: str, prefect_harness: None) -> None:
    async with Database(app_after_url, min_size=1, max_size=2) as db:
        await adopt(db)
        result = await adopt_provider_secrets(db, block_prefix="adopt-test-")
    moved = {m.provider: m for m in result.moved}
    assert moved["primary-smtp"].reference == {"secret_block": "adopt-test-primary-smtp"}
    assert moved["backup-smtp"].note and "discarded" in moved["backup-smtp"].note
    assert read_secret_block("adopt-test-primary-smtp", purpose="test") == "fixture-plaintext-1"
    # The password the app's edge functions send with (password_encrypted) is the one kept.
    assert read_secret_block("adopt-test-backup-smtp", purpose="test") == "fixture-plaintext-2"
    assert providers(app_after_url)["backup-smtp"]["credentials"] == {
        "secret_block": "adopt-test-backup-smtp"
    }
