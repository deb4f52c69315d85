"""``mailpipe setup prefect``: Secret blocks, the work pool and the variables, idempotently."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailpipe.config import Settings, get_settings
from mailpipe.deploy import OrchestrationError
from mailpipe.deploy.api import prefect_api_errors, require_api
from mailpipe.deploy.project import (
    DeploymentSpec,
    load_deployment_specs,
    project_file,
    work_pool_names,
)
from mailpipe.runtime import upsert_secret_block

DATABASE_URL_BLOCK = "mailpipe-database-url"
TIMEZONE_VARIABLE = "mailpipe_timezone"
DATABASE_URL_BLOCK_VARIABLE = "mailpipe_database_url_block"
SECRET_ENV_PREFIX = "MAILPIPE_SECRET_"


def secret_env_name(block: str) -> str:
    """The environment variable ``mailpipe setup prefect`` reads a Secret block's value from."""
    return SECRET_ENV_PREFIX + block.upper().replace("-", "_")


# --- setup prefect ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SetupStep:
    """One object ``setup_prefect`` looked after; ``detail`` never holds a secret."""

    kind: str
    name: str
    action: str  # created, updated, unchanged, kept, missing, skipped
    detail: str = ""


SecretSource = Callable[[str], str | None]


def env_secret_source(block: str) -> str | None:
    """Default secret source: ``MAILPIPE_SECRET_<BLOCK_NAME>`` from the environment."""
    return os.environ.get(secret_env_name(block)) or None


async def setup_prefect(
    *,
    settings: Settings | None = None,
    secret_source: SecretSource = env_secret_source,
    pool_type: str = "process",
    base_job_template: Mapping[str, Any] | None = None,
    project: Path | None = None,
) -> list[SetupStep]:
    """Prepare the Prefect API for mailpipe's deployments; safe to run again and again.

    - Secret block ``mailpipe-database-url`` from ``DATABASE_URL`` (when set; with the embedded
      Postgres there is nothing to store: it only exists on this machine);
    - a Secret block per SMTP provider whose credentials reference ``{"secret_block": NAME}``,
      valued from ``secret_source(NAME)`` (default: ``MAILPIPE_SECRET_<NAME>``); an existing
      block is kept when no value is given;
    - the work pools ``prefect.yaml`` uses (``pool_type``; an existing pool is kept as it is);
    - the variables ``mailpipe_timezone`` and ``mailpipe_database_url_block`` that
      ``prefect.yaml`` reads at deploy time.
    """
    from mailpipe.config import resolve_timezone

    settings = settings or get_settings()
    timezone = resolve_timezone(settings.timezone)
    specs = load_deployment_specs(project_file(project))
    with prefect_api_errors(require_api()):
        return await _setup_prefect(
            settings, timezone, specs, secret_source, pool_type, base_job_template
        )


async def _setup_prefect(
    settings: Settings,
    timezone: str,
    specs: list[DeploymentSpec],
    secret_source: SecretSource,
    pool_type: str,
    base_job_template: Mapping[str, Any] | None,
) -> list[SetupStep]:
    steps: list[SetupStep] = []

    block_name = ""
    if settings.database_url is not None:
        block_name = settings.database_url_block or DATABASE_URL_BLOCK
        action = await upsert_secret_block(block_name, settings.database_url.get_secret_value())
        steps.append(SetupStep("secret block", block_name, action, "from DATABASE_URL"))
    elif settings.database_url_block:
        block_name = settings.database_url_block
        exists = await _secret_exists(block_name)
        steps.append(
            SetupStep(
                "secret block",
                block_name,
                "kept" if exists else "missing",
                "MAILPIPE_DATABASE_URL_BLOCK"
                if exists
                else "set DATABASE_URL and run again to create it",
            )
        )
    else:
        steps.append(
            SetupStep(
                "secret block",
                DATABASE_URL_BLOCK,
                "skipped",
                "no DATABASE_URL: runs use the embedded Postgres of their machine",
            )
        )

    for block in await _provider_secret_blocks(settings):
        value = secret_source(block)
        if value:
            action = await upsert_secret_block(block, value)
            steps.append(SetupStep("secret block", block, action, "SMTP password"))
        elif await _secret_exists(block):
            steps.append(SetupStep("secret block", block, "kept", "SMTP password"))
        else:
            steps.append(
                SetupStep(
                    "secret block",
                    block,
                    "missing",
                    f"SMTP password: set {secret_env_name(block)} and run again",
                )
            )

    for pool in work_pool_names(specs):
        steps.append(await _ensure_work_pool(pool, pool_type, base_job_template))

    for name, value in ((TIMEZONE_VARIABLE, timezone), (DATABASE_URL_BLOCK_VARIABLE, block_name)):
        steps.append(SetupStep("variable", name, await _upsert_variable(name, value), value))
    return steps


async def _secret_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_block_document_by_name(name, block_type_slug="secret")
        except ObjectNotFound:
            return False
    return True


async def _provider_secret_blocks(settings: Settings) -> list[str]:
    """The Secret blocks the providers' credentials references name."""
    from mailpipe.db import Database
    from mailpipe.providers import load_providers

    async with Database(settings=settings, min_size=1, max_size=1) as db:
        providers = await load_providers(db)
    return sorted(
        {
            p.credentials["secret_block"]
            for p in providers
            if p.credentials and "secret_block" in p.credentials
        }
    )


async def _ensure_work_pool(
    name: str, pool_type: str, base_job_template: Mapping[str, Any] | None
) -> SetupStep:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.base import BaseWorker

    async with get_client() as client:
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            pass
        else:
            return SetupStep("work pool", name, "kept", f"type {pool.type}")
        template = dict(base_job_template) if base_job_template else None
        if template is None:
            worker = BaseWorker.get_worker_class_from_type(pool_type)
            if worker is None:
                raise OrchestrationError(
                    f"no {pool_type!r} worker installed here to take its default job template "
                    f"from; pass --base-job-template (see deployments/{pool_type}/)"
                )
            template = worker.get_default_base_job_template()
        await client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type=pool_type,
                base_job_template=template,
                description="mailpipe: the flows of prefect.yaml",
            )
        )
    return SetupStep("work pool", name, "created", f"type {pool_type}")


async def _upsert_variable(name: str, value: str) -> str:
    from prefect.variables import Variable

    missing = object()
    current = await Variable.aget(name, default=missing)
    if current == value:
        return "unchanged"
    await Variable.aset(name, value, overwrite=True)
    return "created" if current is missing else "updated"
