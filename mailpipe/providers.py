"""SMTP providers: their settings, which are usable now, their credentials and their circuit."""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

from mailpipe.config import Settings, get_settings
from mailpipe.db import Database, Jsonb, Row
from mailpipe.errors import ConfigError, IntegrityViolation, MailpipeError
from mailpipe.messages import InvalidMessage, check_header, validate_recipient
from mailpipe.queries import query
from mailpipe.values import is_int

TLS_MODES = ("implicit", "starttls", "none")


class CredentialsError(MailpipeError):
    """A provider's credentials reference cannot be resolved (missing env var or block)."""


@dataclass(frozen=True)
class Provider:
    """One row of ``smtp_provider_configs``."""

    id: int
    name: str
    host: str
    port: int
    tls_mode: str
    username: str | None
    credentials: dict[str, str] | None
    from_address: str | None
    priority: int
    timeout_seconds: float
    max_connections: int
    per_minute_limit: int | None
    per_hour_limit: int | None
    per_day_limit: int | None
    status: str
    suspended_until: dt.datetime | None
    health_score: float
    consecutive_failures: int
    last_checked: dt.datetime | None

    @classmethod
    def from_row(cls, row: Row) -> Provider:
        """Build from a ``list_providers`` row."""
        fields: dict[str, Any] = dict(row)
        fields["name"] = fields.pop("provider_name")
        return cls(**fields)

    def is_usable(self, now: dt.datetime) -> bool:
        """Active, or suspended with the suspension over (half-open: worth one more try)."""
        if self.status == "active":
            return True
        return self.status == "suspended" and (
            self.suspended_until is None or self.suspended_until <= now
        )

    @property
    def limits(self) -> dict[str, int]:
        """The configured send limits by window (``minute``, ``hour``, ``day``)."""
        windows = {
            "minute": self.per_minute_limit,
            "hour": self.per_hour_limit,
            "day": self.per_day_limit,
        }
        return {window: limit for window, limit in windows.items() if limit is not None}

    def credential_reference(self) -> str:
        """A printable description of where the password comes from (never the password)."""
        if not self.credentials:
            return "none"
        if "secret_block" in self.credentials:
            return f"Secret block {self.credentials['secret_block']!r}"
        return f"environment variable {self.credentials['password_env']}"


async def load_providers(db: Database, *, include_disabled: bool = True) -> list[Provider]:
    """Every provider, best first (priority, then health)."""
    providers = [Provider.from_row(r) for r in await db.fetch_all(query("list_providers"))]
    if not include_disabled:
        providers = [p for p in providers if p.status != "disabled"]
    return providers


def usable_providers(providers: list[Provider], now: dt.datetime) -> list[Provider]:
    """Providers mail may go through now, in failover order: priority, then health score."""
    usable = [p for p in providers if p.is_usable(now)]
    return sorted(usable, key=lambda p: (p.priority, -p.health_score, p.name))


async def resolve_password(provider: Provider) -> str | None:
    """The SMTP password from the provider's credentials reference (None: no AUTH).

    ``{"password_env": VAR}`` reads the environment; ``{"secret_block": NAME}`` loads a Prefect
    Secret block (Prefect is imported only then). Raises :class:`CredentialsError` with what to
    fix; the error never contains the secret.
    """
    creds = provider.credentials
    if not creds:
        return None
    if "password_env" in creds:
        variable = creds["password_env"]
        value = os.environ.get(variable)
        if not value:
            raise CredentialsError(
                f"provider {provider.name!r}: environment variable {variable} is not set; "
                f"export it on the workers or change the provider's credentials reference"
            )
        return value
    if "secret_block" in creds:
        from mailpipe.runtime import aread_secret_block  # imports Prefect, only here

        try:
            return await aread_secret_block(
                creds["secret_block"], purpose=f"provider {provider.name!r}"
            )
        except ConfigError as exc:
            raise CredentialsError(str(exc)) from None
    raise CredentialsError(f"provider {provider.name!r}: unknown credentials reference")


async def record_provider_failure(
    db: Database, provider_name: str, settings: Settings | None = None, *, run: str | None = None
) -> Row | None:
    """Count a connection-level failure; suspends the provider past the threshold.

    With ``run`` (a delivery run's id, shared by all its drainers and processes) the failure
    counts once per run: a later call with the same run changes nothing and returns None.
    """
    settings = settings or get_settings()
    return await db.fetch_one(
        query("record_provider_failure"),
        {
            "run": run,
            "provider_name": provider_name,
            "threshold": settings.provider_failure_threshold,
            "base_seconds": settings.suspension_base_seconds,
            "max_seconds": settings.suspension_max_seconds,
        },
    )


async def record_provider_success(db: Database, provider_name: str) -> None:
    """Reset the failure count; a suspended provider that works again becomes active."""
    await db.execute(query("record_provider_success"), {"provider_name": provider_name})


# -------------------------------------------------------------- administration (mailpipe provider)

SETTINGS_FIELDS = (
    "host",
    "port",
    "tls_mode",
    "username",
    "credentials",
    "from_address",
    "priority",
    "timeout_seconds",
    "max_connections",
    "per_minute_limit",
    "per_hour_limit",
    "per_day_limit",
)
_BLOCK_NAME = re.compile(r"^[a-z0-9-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class InvalidProvider(MailpipeError):
    """A provider setting is out of range or malformed; the message says which and how."""


class UnknownProvider(MailpipeError):
    """No provider has this name."""


def credentials_reference(
    *, secret_block: str | None = None, password_env: str | None = None
) -> dict[str, str] | None:
    """The ``credentials`` value for a Secret block name or an environment variable name.

    Only references are stored (the table's CHECK refuses anything else): the password itself
    stays in Prefect or in the workers' environment.
    """
    if secret_block is not None and password_env is not None:
        raise InvalidProvider("give --secret-block or --password-env, not both")
    if secret_block is not None:
        if not _BLOCK_NAME.fullmatch(secret_block):
            raise InvalidProvider(
                f"secret block name {secret_block!r} is invalid: Prefect "
                "block names use lowercase letters, digits and dashes"
            )
        return {"secret_block": secret_block}
    if password_env is not None:
        if not _ENV_NAME.fullmatch(password_env):
            raise InvalidProvider(
                f"{password_env!r} is not an environment variable name "
                "(letters, digits, underscores; e.g. SMTP_PASSWORD)"
            )
        return {"password_env": password_env}
    return None


def validate_provider_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Check a provider's complete settings; raises :class:`InvalidProvider` with the fix."""
    if not _PROVIDER_NAME.fullmatch(name or "") or len(name) > 100:
        raise InvalidProvider(
            f"provider name {name!r} is invalid: use letters, digits, dots, "
            "dashes and underscores (e.g. sendgrid-eu)"
        )
    host = settings.get("host")
    if (
        not isinstance(host, str)
        or not host.strip()
        or any(c.isspace() or not c.isprintable() for c in host)
    ):
        raise InvalidProvider(f"host {host!r} is invalid: give a hostname or IP (--host)")
    port = settings.get("port")
    if not is_int(port) or not 1 <= port <= 65535:
        raise InvalidProvider(
            f"port {port} is out of range: use 1-65535 (587 STARTTLS, 465 implicit TLS, 25 relay)"
        )
    if settings.get("tls_mode") not in TLS_MODES:
        raise InvalidProvider(
            f"TLS mode {settings.get('tls_mode')!r} is unknown: use one of {', '.join(TLS_MODES)}"
        )
    if settings.get("credentials") and not settings.get("username"):
        raise InvalidProvider("a credentials reference needs --username (the SMTP AUTH user)")
    username = settings.get("username")
    if username is not None and (not username or any(ord(c) < 32 for c in username)):
        raise InvalidProvider("username must be non-empty and contain no control characters")
    sender = settings.get("from_address")
    if sender is not None:
        try:
            check_header("From", sender)
            validate_recipient(parseaddr(sender)[1])
        except InvalidMessage as exc:
            raise InvalidProvider(
                f"from address {sender!r} is invalid ({exc}): use "
                "'Name <user@example.com>' or user@example.com"
            ) from None
    for field_name, low, high in (("priority", -1_000_000, 1_000_000), ("max_connections", 1, 100)):
        value = settings.get(field_name)
        if not is_int(value) or not low <= value <= high:
            raise InvalidProvider(
                f"{field_name.replace('_', '-')} {value!r} is out of range ({low}-{high})"
            )
    timeout = settings.get("timeout_seconds")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise InvalidProvider(f"timeout {timeout!r} is out of range: use 0-600 seconds")
    for window in ("minute", "hour", "day"):
        limit = settings.get(f"per_{window}_limit")
        if limit is not None and (not is_int(limit) or not 0 <= limit <= 2_147_483_647):
            raise InvalidProvider(
                f"per-{window} limit {limit!r} must be 0 or more (or 'none' for no limit)"
            )
    return settings


async def get_provider(db: Database, name: str) -> Provider:
    """The provider called ``name``; :class:`UnknownProvider` names the command to list them."""
    row = await db.fetch_one(query("admin_get_provider"), (name,))
    if row is None:
        raise UnknownProvider(f"no provider named {name!r}: see `mailpipe provider list`")
    return Provider.from_row(row)


async def add_provider(
    db: Database,
    name: str,
    *,
    host: str,
    port: int = 587,
    tls_mode: str = "starttls",
    username: str | None = None,
    credentials: dict[str, str] | None = None,
    from_address: str | None = None,
    priority: int = 100,
    timeout_seconds: float = 10.0,
    max_connections: int = 4,
    per_minute_limit: int | None = None,
    per_hour_limit: int | None = None,
    per_day_limit: int | None = None,
) -> Provider:
    """Add an active provider; :class:`InvalidProvider` when a setting is wrong or the name
    is taken. ``credentials`` comes from :func:`credentials_reference`."""
    settings = validate_provider_settings(
        name,
        {
            "host": host,
            "port": port,
            "tls_mode": tls_mode,
            "username": username,
            "credentials": credentials,
            "from_address": from_address,
            "priority": priority,
            "timeout_seconds": timeout_seconds,
            "max_connections": max_connections,
            "per_minute_limit": per_minute_limit,
            "per_hour_limit": per_hour_limit,
            "per_day_limit": per_day_limit,
        },
    )
    try:
        row = await db.fetch_one(query("admin_insert_provider"), _provider_params(name, settings))
    except IntegrityViolation as exc:
        if exc.constraint_name == "idx_smtp_provider_configs_provider_name":
            raise InvalidProvider(
                f"provider {name!r} already exists: change it with "
                f"`mailpipe provider update {name} ...`"
            ) from None
        raise
    assert row is not None
    return Provider.from_row(row)


async def update_provider(db: Database, name: str, **changes: Any) -> Provider:
    """Change some settings of a provider (any of :data:`SETTINGS_FIELDS`); the others keep
    their values. The merged settings are validated as a whole before anything is written."""
    unknown = set(changes) - set(SETTINGS_FIELDS)
    if unknown:
        raise InvalidProvider(f"unknown provider setting(s): {', '.join(sorted(unknown))}")
    async with db.transaction() as tx:
        # A row lock, not a table lock: delivery keeps reading and updating other providers.
        row = await tx.fetch_one(query("admin_lock_provider"), (name,))
        if row is None:
            raise UnknownProvider(f"no provider named {name!r}: see `mailpipe provider list`")
        current = {f: row[f] for f in SETTINGS_FIELDS}
        settings = validate_provider_settings(name, {**current, **changes})
        updated = await tx.fetch_one(
            query("admin_update_provider"), _provider_params(name, settings)
        )
    assert updated is not None
    return Provider.from_row(updated)


def _provider_params(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    credentials = settings["credentials"]
    return {
        **settings,
        "provider_name": name,
        "credentials": Jsonb(credentials) if credentials else None,
    }


async def remove_provider(db: Database, name: str) -> None:
    """Delete a provider. Its audit rows, confirmations and counters keep its name."""
    if await db.execute(query("admin_delete_provider"), (name,)) == 0:
        raise UnknownProvider(f"no provider named {name!r}: see `mailpipe provider list`")


async def suspend_provider(
    db: Database, name: str, duration: dt.timedelta | None = None
) -> Provider:
    """Stop sending through a provider: for ``duration`` (status suspended: the flow tries it
    again afterwards, monitoring may restore it earlier) or, without one, until
    :func:`resume_provider` (status disabled)."""
    if duration is not None and duration.total_seconds() <= 0:
        raise InvalidProvider("the suspension must last more than 0 seconds (e.g. --for 30m)")
    row = await db.fetch_one(
        query("admin_suspend_provider"),
        {
            "provider_name": name,
            "seconds": duration.total_seconds() if duration is not None else None,
        },
    )
    if row is None:
        raise UnknownProvider(f"no provider named {name!r}: see `mailpipe provider list`")
    return Provider.from_row(row)


async def resume_provider(db: Database, name: str) -> Provider:
    """Make a suspended or disabled provider active now, with a clean failure count."""
    row = await db.fetch_one(query("admin_resume_provider"), (name,))
    if row is None:
        raise UnknownProvider(f"no provider named {name!r}: see `mailpipe provider list`")
    return Provider.from_row(row)


async def provider_activity_today(
    db: Database, settings: Settings | None = None
) -> dict[str, dict[str, int]]:
    """Per provider since midnight (MAILPIPE_TIMEZONE): messages ``sent`` (confirmations) and
    ``failed`` (permanent failures and bounces recorded against it)."""
    settings = settings or get_settings()
    rows = await db.fetch_all(
        query("admin_provider_activity_today"), {"timezone": settings.timezone}
    )
    return {r["provider_name"]: {"sent": r["sent"], "failed": r["failed"]} for r in rows}
