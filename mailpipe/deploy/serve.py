"""``mailpipe serve``: the deployments of ``prefect.yaml`` served from one process."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mailpipe.config import Settings, get_settings
from mailpipe.deploy.api import prefect_api_errors, require_api
from mailpipe.deploy.processes import (
    feedback_receiver_address,
    start_deliverer,
    start_feedback_receiver,
    start_quality_worker,
    stop_processes,
)
from mailpipe.deploy.project import (
    PROJECT_FILE,
    DeploymentSpec,
    load_deployment_specs,
    project_dir,
    project_file,
    resolve_templates,
    work_pool_names,
)
from mailpipe.deploy.recovery import crash_abandoned_runs
from mailpipe.errors import ConfigError

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

log = logging.getLogger(__name__)


def served_deployments(specs: list[DeploymentSpec], *, timezone: str) -> list[RunnerDeployment]:
    """Runner deployments for ``serve``: same names, schedules, parameters, limits as deployed.

    ``specs`` must have their templates resolved; a schedule whose timezone resolved to nothing
    (the variable is not set) uses ``timezone``. Entrypoints are loaded relative to the current
    folder, and a broken import fails here, not at the first run.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    deployments = []
    for spec in specs:
        flow = load_flow_from_entrypoint(spec.entrypoint, use_placeholder_flow=False)
        schedules = []
        for item in spec.schedules:
            if "cron" not in item:
                raise ConfigError(f"{spec.name}: mailpipe serve supports cron schedules only")
            schedules.append(
                Cron(
                    item["cron"],
                    timezone=item.get("timezone") or timezone,
                    day_or=item.get("day_or", True),
                    active=item.get("active", True),
                )
            )
        limit = spec.concurrency_limit
        if isinstance(limit, dict):
            limit = ConcurrencyLimitConfig(**limit)
        deployments.append(
            flow.to_deployment(
                name=spec.name,
                schedules=schedules,
                parameters=spec.parameters,
                description=spec.description or None,
                tags=spec.tags,
                concurrency_limit=limit,
            )
        )
    return deployments


def serve_project(
    *,
    names: list[str] | None = None,
    limit: int | None = None,
    project: Path | None = None,
    settings: Settings | None = None,
    quality_worker: bool = True,
    deliverer: bool = True,
    feedback_receiver: bool = True,
) -> None:
    """Serve the deployments of ``prefect.yaml`` from this process until it is stopped, with
    a ``mailpipe check worker`` beside it (``quality_worker``) for the post-run checks, a
    ``mailpipe deliver`` (``deliverer``) that sends events as soon as they are due
    (``process_email_queue`` then sweeps up retries and anything missed) and the providers'
    webhook receiver ``mailpipe feedback serve`` (``feedback_receiver``; its port is refused
    before anything starts when taken), as ``mailpipe up`` does.

    Schedules stay active when it stops (``pause_on_shutdown=False``): a restart picks up where
    it left off, and a worker can take over. The environment the deployments give their runs
    (``work_pool.job_variables.env``) is applied to this process where it is not set already.
    """
    from prefect import serve

    settings = settings or get_settings()
    project = project or project_dir(settings)
    specs = load_deployment_specs(project_file(project))
    receiver_at = feedback_receiver_address() if feedback_receiver else None
    if names:
        unknown = sorted(set(names) - {s.name for s in specs})
        if unknown:
            raise ConfigError(
                f"no deployment named {', '.join(unknown)} in {PROJECT_FILE}; "
                f"choose from {', '.join(s.name for s in specs)}"
            )
        specs = [s for s in specs if s.name in names]
    os.chdir(project)
    api_url = require_api()
    with prefect_api_errors(api_url):
        resolved = [
            DeploymentSpec(**r)
            for r in asyncio.run(resolve_templates([dataclasses.asdict(s) for s in specs]))
        ]
        asyncio.run(_give_served_deployments_a_path([s.full_name for s in resolved]))
        # Before serving: runs a dead process left Pending would hold their slots for good.
        pools = work_pool_names(specs)
        for run in asyncio.run(crash_abandoned_runs([s.full_name for s in resolved], pools=pools)):
            log.warning(
                "crashed run %s of %s, left behind: %s", run.name, run.deployment, run.reason
            )
    for spec in resolved:
        env = (spec.work_pool.get("job_variables") or {}).get("env") or {}
        for key, value in env.items():
            if value not in (None, "") and "{{" not in str(value):
                os.environ.setdefault(key, str(value))
    get_settings.cache_clear()
    children = []
    if quality_worker:
        children.append(start_quality_worker(project=project))
    if receiver_at:
        log.info("feedback receiver: http://%s/feedback/<provider>", receiver_at)
        children.append(start_feedback_receiver(project=project))
    if deliverer:
        # With the API in its environment (not only in a profile), the deliverer hosts the
        # sweeper: it takes process_email_queue's runs ahead of this process's runner
        # (mailpipe.deploy.sweeper), which runs them only while the deliverer is down.
        env = {**os.environ, "PREFECT_API_URL": api_url}
        children.append(start_deliverer(project=project, env=env))
    try:
        serve(
            *served_deployments(resolved, timezone=settings.timezone),
            pause_on_shutdown=False,
            limit=limit,
        )
    finally:
        # Their own process groups: Ctrl-C reached serve alone; SIGTERM to both at once.
        stop_processes(children)


async def _give_served_deployments_a_path(names: list[str]) -> None:
    """Let serve take over deployments registered by ``prefect deploy``.

    Those have pull steps and no ``path``; serve's update drops the pull steps but (Prefect
    3.9) never sets ``path``, and its runs then fail to load the flow. Path "." is what serve
    itself gives a new deployment: the flow is loaded from serve's folder.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for name in names:
            try:
                deployment = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if deployment.path is None:
                await client.update_deployment(deployment.id, DeploymentUpdate(path="."))
