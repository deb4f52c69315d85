"""``mailpipe provider adopt``: the app's provider passwords out of the database.

The app keeps SMTP passwords in clear (``password_encrypted``, and the seed's ``credentials``
jsonb). For each such provider the password moves into a Prefect Secret block (written through
:func:`mailpipe.runtime.upsert_secret_block`), or an environment variable the operator names is
checked to hold the same value (compared in constant time, never printed); ``credentials`` then
holds only the reference. ``password_encrypted`` is kept for now: the app's edge functions read
it as long as the old pipeline may run. ``--finalize`` (after ``mailpipe cutover --finalize``)
clears it and adds the references-only CHECKs (``sql/adoption/secrets/``), refused with nothing
changed while any plaintext remains.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mailpipe.db import Database, Jsonb
from mailpipe.errors import ConfigError, MailpipeError
from mailpipe.migrations import ADVISORY_LOCK_KEY, Migration, load_migrations, run_statements
from mailpipe.providers import credentials_reference
from mailpipe.queries import query, sql_dir

__all__ = ["ProviderSecret", "SecretsResult", "adopt_provider_secrets", "finalize_provider_secrets"]

ADOPTION_PREFIX = "adoption/secrets/"


@dataclass(frozen=True)
class ProviderSecret:
    """What happened to one provider's password (never the password)."""

    provider: str
    reference: dict[str, str]
    action: str  # secret block created/updated/unchanged, env var checked
    note: str | None = None


@dataclass
class SecretsResult:
    """One ``provider adopt`` run."""

    moved: list[ProviderSecret] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    finalized: bool = False


def block_name(provider: str, prefix: str) -> str:
    """The Secret block for a provider: ``<prefix><provider>`` in Prefect's alphabet."""
    slug = re.sub(r"[^a-z0-9-]+", "-", provider.lower()).strip("-") or "provider"
    return f"{prefix}{slug}"


async def adopt_provider_secrets(
    db: Database,
    *,
    password_env: dict[str, str] | None = None,
    block_prefix: str = "smtp-",
) -> SecretsResult:
    """Move every plaintext provider password out (see the module docstring); idempotent.

    ``password_env`` maps a provider name to the environment variable that already holds its
    password on the workers; the others go to Secret blocks named by :func:`block_name`.
    """
    password_env = dict(password_env or {})
    result = SecretsResult()
    rows = await db.fetch_all(query("adoption_provider_plaintext"))
    unknown = sorted(set(password_env) - {r["provider"] for r in rows})
    if unknown:
        known = await db.fetch_all("SELECT provider_name FROM smtp_provider_configs")
        missing = sorted(set(unknown) - {r["provider_name"] for r in known})
        if missing:
            raise ConfigError(f"--password-env names no such provider: {', '.join(missing)}")
    # Check everything first (env vars, readable passwords), then write: a refusal changes
    # nothing for any provider.
    plan: list[tuple[str, str, str | None]] = []  # provider, password, note
    for row in rows:
        name = row["provider"]
        if row["reference"]:
            continue  # already a reference; only password_encrypted waits for --finalize
        password = row["password_encrypted"] or row["credentials_password"]
        note = None
        if (
            row["password_encrypted"]
            and row["credentials_password"]
            and row["credentials_password"] != row["password_encrypted"]
        ):
            # The app's edge functions send with password_encrypted: that one is kept.
            note = "credentials held another password than password_encrypted: discarded"
        if password is None:
            raise MailpipeError(
                f"provider {name!r}: credentials hold neither a reference nor a password "
                "mailpipe can read (keys password/pass): set the reference by hand with "
                "`mailpipe provider update --secret-block/--password-env`"
            )
        if name in password_env:
            variable = password_env[name]
            credentials_reference(password_env=variable)  # a valid name, or InvalidProvider
            value = os.environ.get(variable)
            if value is None:
                raise ConfigError(
                    f"provider {name!r}: environment variable {variable} is not set here; "
                    "export it (the workers need it too) and run again; nothing changed"
                )
            if not hmac.compare_digest(value.encode(), password.encode()):
                raise ConfigError(
                    f"provider {name!r}: environment variable {variable} does not hold the "
                    "password stored in the database; nothing changed"
                )
        plan.append((name, password, note))

    for name, password, note in plan:
        if name in password_env:
            reference = credentials_reference(password_env=password_env[name])
            action = f"env var {password_env[name]} checked"
        else:
            from mailpipe.runtime import upsert_secret_block  # imports Prefect, only here

            block = block_name(name, block_prefix)
            reference = credentials_reference(secret_block=block)
            action = f"secret block {block} " + await upsert_secret_block(block, password)
        assert reference is not None
        await db.execute(
            query("adoption_set_provider_reference"),
            {"provider": name, "reference": Jsonb(reference)},
        )
        result.moved.append(ProviderSecret(name, reference, action, note))
    return result


def secrets_files(folder: Path | None = None) -> list[Migration]:
    """The finalize step's files (``sql/adoption/secrets/``)."""
    return load_migrations(folder or sql_dir() / "adoption" / "secrets")


async def finalize_provider_secrets(db: Database, *, lock_timeout: str = "5s") -> SecretsResult:
    """Clear ``password_encrypted`` where a reference exists, then add the references-only
    CHECKs (refused, nothing changed, while any provider still holds plaintext)."""
    db.require_session("mailpipe provider adopt --finalize (its advisory lock)")
    result = SecretsResult()
    unmoved = [
        r["provider"]
        for r in await db.fetch_all(query("adoption_provider_plaintext"))
        if not r["reference"]
    ]
    if unmoved:
        raise MailpipeError(
            f"refused, nothing changed: providers still hold a password in clear and no "
            f"reference: {', '.join(unmoved)}. Run `mailpipe provider adopt` first"
        )
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            await conn.execute("SELECT set_config('lock_timeout', %s, false)", (lock_timeout,))
            rows = await conn.fetch_all(query("adoption_clear_plaintext"))
            result.cleared = [r["provider_name"] for r in rows]
            recorded = {
                r["name"] for r in await conn.fetch_all("SELECT name FROM schema_migrations")
            }
            for step in secrets_files():
                name = ADOPTION_PREFIX + step.name
                if name in recorded:
                    continue
                await run_statements(conn, step)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, checksum, duration_ms) "
                    "VALUES (%s, %s, 0) ON CONFLICT (name) DO NOTHING",
                    (name, step.checksum),
                )
            result.finalized = True
        finally:
            await conn.execute("RESET lock_timeout")
            await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return result
