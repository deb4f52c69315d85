"""The mailpipe project as Prefect sees it: its folder, ``prefect.yaml`` and the pull step."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailpipe.config import Settings, get_settings
from mailpipe.errors import ConfigError

PROJECT_FILE = "prefect.yaml"


def project_dir(settings: Settings | None = None) -> Path:
    """The folder holding ``flows/`` and ``prefect.yaml``: where deployed runs execute.

    ``MAILPIPE_PROJECT_DIR`` when set, else the folder the installed ``flows`` package lives in
    (the checkout for ``uv sync`` / ``pip install -e``; site-packages for a wheel, which ships
    ``flows/`` too). No absolute path is ever written into ``prefect.yaml``.
    """
    settings = settings or get_settings()
    if settings.project_dir is not None:
        path = settings.project_dir.expanduser().resolve()
    else:
        import flows

        path = Path(flows.__file__).resolve().parent.parent
    if not (path / "flows").is_dir():
        raise ConfigError(
            f"{path} has no flows/ folder; set MAILPIPE_PROJECT_DIR to the mailpipe checkout"
        )
    return path


def enter_project_directory(directory: str | None = None) -> dict[str, str]:
    """Pull step of every deployment: run the flow from the mailpipe project on this worker.

    Used in ``prefect.yaml`` as ``mailpipe.deploy.project.enter_project_directory: {}``; the
    worker resolves the folder itself (see :func:`project_dir`), so each machine may keep its
    checkout wherever it likes. Returns ``{"directory": ...}`` like Prefect's own
    ``set_working_directory`` step, which tells the worker where the entrypoint lives.
    """
    if directory:
        path = Path(directory).expanduser().resolve()
        if not (path / "flows").is_dir():
            raise ConfigError(f"{path} has no flows/ folder; point MAILPIPE_PROJECT_DIR at it")
    else:
        path = project_dir()  # checks it
    os.chdir(path)
    return {"directory": str(path)}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of ``prefect.yaml``, as written (templates not yet resolved)."""

    name: str
    entrypoint: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: dict[str, Any] | int | None = None
    work_pool: dict[str, Any] = field(default_factory=dict)

    @property
    def flow_name(self) -> str:
        """The flow function's name (the part of the entrypoint after the colon)."""
        return self.entrypoint.rpartition(":")[2]

    @property
    def full_name(self) -> str:
        """``flow/deployment``, as ``prefect deployment run`` wants it."""
        return f"{self.flow_name}/{self.name}"


def project_file(project: Path | None = None) -> Path:
    """The ``prefect.yaml`` of the project (error with a fix when there is none)."""
    path = (project or project_dir()) / PROJECT_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {PROJECT_FILE} in {path.parent}; set MAILPIPE_PROJECT_DIR to the mailpipe checkout"
        )
    return path


def load_deployment_specs(path: Path | None = None) -> list[DeploymentSpec]:
    """Every deployment declared in ``prefect.yaml`` (YAML aliases expanded)."""
    import yaml

    path = path or project_file()
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    specs = []
    for item in document.get("deployments") or []:
        specs.append(
            DeploymentSpec(
                name=item["name"],
                entrypoint=item["entrypoint"],
                description=item.get("description") or "",
                tags=list(item.get("tags") or []),
                parameters=dict(item.get("parameters") or {}),
                schedules=list(item.get("schedules") or []),
                concurrency_limit=item.get("concurrency_limit"),
                work_pool=dict(item.get("work_pool") or {}),
            )
        )
    return specs


def work_pool_names(specs: list[DeploymentSpec]) -> list[str]:
    """The work pools the deployments use, in order of first use."""
    return list(dict.fromkeys(s.work_pool["name"] for s in specs if s.work_pool.get("name")))


async def resolve_templates(value: Any) -> Any:
    """Resolve ``{{ prefect.variables.* }}``, ``{{ prefect.blocks.* }}`` and ``{{ $ENV }}``
    placeholders the way ``prefect deploy`` does (needs the Prefect API)."""
    from prefect.utilities.templating import (
        apply_values,
        resolve_block_document_references,
        resolve_variables,
    )

    value = await resolve_block_document_references(value)
    value = await resolve_variables(value)
    return apply_values(value, dict(os.environ), remove_notset=False)
