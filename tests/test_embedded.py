"""The embedded Postgres refuses a data folder of another major version, touching nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpipe.config import get_settings
from mailpipe.embedded import check_data_version, server_major_version
from mailpipe.errors import ConfigError
from tests.cli_support import fails


def old_cluster(folder: Path, version: str) -> dict[str, bytes]:
    """A data folder as an older Postgres leaves it (what the check reads), and its contents."""
    folder.mkdir(parents=True)
    (folder / "PG_VERSION").write_text(f"{version}\n")
    (folder / "base").mkdir()
    (folder / "base" / "1").write_bytes(b"old data")
    return snapshot(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_wheel_embeds_postgres_18_or_later() -> None:
    assert server_major_version() >= 18


def test_another_major_version_is_refused_with_the_way_out(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    before = old_cluster(pgdata, "16")
    with pytest.raises(ConfigError) as error:
        check_data_version(pgdata, 18)
    message = str(error.value)
    assert "PostgreSQL 16 cluster" in message and "PostgreSQL 18" in message
    assert "Upgrading the embedded Postgres" in message  # the documented dump/restore
    assert f"mv {pgdata} {pgdata}-16" in message
    assert snapshot(pgdata) == before


def test_the_same_major_version_and_a_new_folder_pass(tmp_path: Path) -> None:
    check_data_version(tmp_path / "missing", 18)
    old_cluster(tmp_path / "pgdata", "18")
    check_data_version(tmp_path / "pgdata", 18)


def test_a_folder_that_is_not_postgres_is_refused(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    old_cluster(pgdata, "not a version")
    with pytest.raises(ConfigError, match="not a PostgreSQL version"):
        check_data_version(pgdata, 18)


def test_the_cli_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("MAILPIPE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        before = old_cluster(tmp_path / "pgdata", "16")
        line = fails("db", "status")
    finally:
        get_settings.cache_clear()
    assert "PostgreSQL 16 cluster" in line
    assert snapshot(tmp_path / "pgdata") == before
