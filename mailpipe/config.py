"""Settings: ``MAILPIPE_*`` environment variables and a ``.env`` file, read once."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailpipe.errors import ConfigError


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
    database_url_block: str | None = Field(
        default=None,
        description="Prefect Secret block holding the Postgres URL, read when DATABASE_URL is "
        "unset (deployed runs; `mailpipe setup prefect` creates it). Empty: unset.",
    )
    project_dir: Path | None = Field(
        default=None,
        description="The mailpipe checkout deployed runs execute in (flows/, prefect.yaml). "
        "Unset: where the installed flows package lives.",
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

    # SMTP and providers
    smtp_verify_certs: bool = Field(
        default=True, description="Verify provider TLS certificates (never off in production)."
    )
    smtp_ca_file: Path | None = Field(
        default=None, description="Extra CA bundle for providers with a private CA."
    )
    provider_failure_threshold: int = Field(
        default=3, ge=1, description="Connection-level failures in a row before suspension."
    )
    suspension_base_seconds: float = Field(default=60.0, gt=0)
    suspension_max_seconds: float = Field(default=3600.0, gt=0)

    # Monitoring (monitor_smtp_health, monitor_email_production); see README "Monitoring"
    probe_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Whole-probe timeout; unset: each provider's own timeout_seconds.",
    )
    health_probe_history: int = Field(
        default=10, ge=1, description="Recent probes per provider the health score weighs."
    )
    health_latency_good_ms: float = Field(default=500.0, gt=0)
    health_latency_bad_ms: float = Field(default=5000.0, gt=0)
    health_delivery_window: str = Field(
        default="1h", description="Delivery outcomes the health score weighs (e.g. 1h)."
    )
    metrics_windows: str = Field(
        default="5m,1h,24h", description="Rolling windows of monitor_email_production."
    )
    alert_min_volume: int = Field(
        default=50, ge=1, description="Messages a window needs before rate rules judge it."
    )
    alert_bounce_rate_warning: float | None = Field(default=0.05, ge=0)
    alert_bounce_rate_critical: float | None = Field(default=0.10, ge=0)
    alert_complaint_rate_warning: float | None = Field(default=0.001, ge=0)
    alert_complaint_rate_critical: float | None = Field(default=0.005, ge=0)
    alert_reputation_window: str = Field(
        default="24h", description="Window of the bounce and complaint rate rules."
    )
    alert_failure_rate_warning: float | None = Field(default=0.10, ge=0)
    alert_failure_rate_critical: float | None = Field(default=0.25, ge=0)
    alert_failure_window: str = Field(default="1h")
    alert_queue_lag_warning_seconds: float | None = Field(default=300.0, ge=0)
    alert_queue_lag_critical_seconds: float | None = Field(default=900.0, ge=0)
    alert_rate_limit_warning: float | None = Field(
        default=1, ge=0, description="Rate-limit windows that deferred sends, recently."
    )
    alert_rate_limit_critical: float | None = Field(default=None, ge=0)
    alert_rate_limit_window: str = Field(default="5m")
    alert_webhook_url: SecretStr | None = Field(
        default=None, description="Optional: POST each opened/resolved alert as JSON here."
    )
    timezone: str = Field(default="UTC", description="Timezone of schedules and daily snapshots.")

    @field_validator("timezone", mode="before")
    @classmethod
    def _empty_timezone_is_utc(cls, value: object) -> object:
        # Deployed runs get MAILPIPE_TIMEZONE from a Prefect variable, empty when it is unset.
        return value or "UTC"

    # Data quality (Great Expectations suites in expectations/); see README "Data quality"
    quality_results_dir: Path | None = Field(
        default=None,
        description="Validation results and Data Docs; unset: <data_dir>/quality.",
    )
    quality_policies: dict[str, str] = Field(
        default_factory=dict,
        description='Override suite policies (fail or warn), e.g. {"rate_limit_counters": "fail"}.',
    )
    quality_keep_runs: int = Field(
        default=20, ge=1, description="Validation results (and Data Docs pages) kept per suite."
    )
    quality_keep_days: int = Field(
        default=30,
        ge=1,
        description="Days of post-run check history (quality_checks rows) kept.",
    )
    quality_claim_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="A flow run whose check no `mailpipe check worker` claims within this "
        "long checks itself.",
    )
    quality_check_timeout_seconds: float = Field(
        default=900.0,
        gt=0,
        description="A flow run waits this long for a worker's answer before failing.",
    )

    @property
    def pgdata(self) -> Path:
        """The embedded Postgres data folder."""
        return self.data_dir / "pgdata"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment and ``.env``."""
    return Settings()


def resolve_timezone(name: str | None = None) -> str:
    """The IANA timezone to cut days in (``MAILPIPE_TIMEZONE`` by default), checked."""
    name = name or get_settings().timezone
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown timezone {name!r}: set MAILPIPE_TIMEZONE to an IANA name "
            "such as 'UTC' or 'Europe/Paris'"
        ) from None
    return name
