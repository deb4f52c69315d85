"""Settings: ``MAILPIPE_*`` environment variables and a ``.env`` file, read once."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything mailpipe can be configured with. Each field documents its environment name."""

    model_config = SettingsConfigDict(
        env_prefix="MAILPIPE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "MAILPIPE_DATABASE_URL"),
        description="Postgres URL (any Postgres: Supabase, RDS, local). "
        "Unset: an embedded Postgres is started in data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".mailpipe"),
        description="Where the embedded Postgres (pgdata/) and the capture Maildir live.",
    )
    pool_min_size: int = Field(default=1, ge=1)
    pool_max_size: int = Field(default=8, ge=1)
    connect_timeout: float = Field(default=10.0, gt=0)

    # Delivery
    max_retries: int = Field(default=5, ge=0, description="Transient failures before failed.")
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    lease_seconds: int = Field(default=300, ge=5, description="Claim lease; rescued after this.")
    domain_limits: dict[str, int] = Field(
        default_factory=dict,
        description='Per recipient domain sends per minute, e.g. {"gmail.com": 600}.',
    )
    message_id_domain: str = Field(default="mailpipe.local")
    timezone: str = Field(default="UTC", description="Timezone of schedules and daily snapshots.")

    @property
    def pgdata(self) -> Path:
        """The embedded Postgres data folder."""
        return self.data_dir / "pgdata"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment and ``.env``."""
    return Settings()
