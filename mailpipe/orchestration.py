"""Running the four flows as Prefect deployments: the project file, setup, serve, up, late runs.

``prefect.yaml`` is the single declaration of the deployments. This module reads it for
``mailpipe serve`` (one process serving all four, for a single machine), prepares a Prefect
server for workers (``mailpipe setup prefect``: Secret blocks, the work pool, variables, all
idempotent), and runs the whole system on one machine (``mailpipe up``). It also holds the pull
step the deployments use and the late-run guard flows may call. Prefect is imported lazily, inside
the functions that need it, like everywhere in ``mailpipe/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mailpipe.config import Settings, get_settings
from mailpipe.errors import ConfigError, MailpipeError

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

PROJECT_FILE = "prefect.yaml"
DATABASE_URL_BLOCK = "mailpipe-database-url"
TIMEZONE_VARIABLE = "mailpipe_timezone"
DATABASE_URL_BLOCK_VARIABLE = "mailpipe_database_url_block"
SECRET_ENV_PREFIX = "MAILPIPE_SECRET_"
STARTUP_TIMEOUT_SECONDS = 120.0


class OrchestrationError(MailpipeError):
    """Prefect cannot be prepared or reached (what failed and how to fix it)."""


# --- the project ------------------------------------------------------------------------------


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

    Used in ``prefect.yaml`` as ``mailpipe.orchestration.enter_project_directory: {}``; the
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


def require_api() -> str:
    """The configured Prefect API URL; without one Prefect would start a throwaway server."""
    url = configured_api_url()
    if not url:
        raise ConfigError(
            "no Prefect API configured: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api "
            "after `prefect server start`), or run `mailpipe up`, which starts one"
        )
    return url


@contextlib.contextmanager
def prefect_api_errors(url: str) -> Iterator[None]:
    """Turn HTTP failures talking to Prefect into one line (status only: a response body
    could echo a secret that was being saved)."""
    import httpx

    try:
        yield
    except httpx.HTTPStatusError as exc:
        raise OrchestrationError(
            f"the Prefect API at {url} refused a request ({exc.response.status_code} for "
            f"{exc.request.method} {exc.request.url.path})"
        ) from None
    except httpx.HTTPError as exc:
        raise OrchestrationError(
            f"cannot reach the Prefect API at {url} ({type(exc).__name__}); is the server "
            "running? (`prefect server start`, or `mailpipe up`)"
        ) from None


# --- secrets ----------------------------------------------------------------------------------


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
    from mailpipe.snapshots import resolve_timezone

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
        action = await _upsert_secret(block_name, settings.database_url.get_secret_value())
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
            action = await _upsert_secret(block, value)
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


async def _upsert_secret(name: str, value: str) -> str:
    from mailpipe.runtime import upsert_secret_block  # the one Secret-block writer

    return await upsert_secret_block(name, value)


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
                description="mailpipe: the four flows of prefect.yaml",
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


# --- late runs --------------------------------------------------------------------------------


def run_lateness(now: dt.datetime | None = None) -> dt.timedelta:
    """How long after its scheduled time the current flow run is running (zero outside runs)."""
    from prefect.runtime import flow_run

    now = now or dt.datetime.now(dt.UTC)
    scheduled = flow_run.scheduled_start_time
    return max(now - scheduled, dt.timedelta(0))


def skip_if_late(max_late: dt.timedelta, *, now: dt.datetime | None = None) -> str | None:
    """Why the current run should not do its work, or None to go on.

    For flows whose work is only worth doing now (the monitors): a run that starts more than
    ``max_late`` after its slot (a worker came back after downtime and found old scheduled runs)
    returns early, and the next on-time run measures the present instead. The flow logs the
    reason and returns it; the run still completes. Runs started by hand are never late.
    """
    late = run_lateness(now)
    if late <= max_late:
        return None
    return (
        f"skipped: started {late.total_seconds():.0f} s after its scheduled time "
        f"(more than {max_late.total_seconds():.0f} s late); the next run catches up"
    )


# --- serve ------------------------------------------------------------------------------------


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
) -> None:
    """Serve the deployments of ``prefect.yaml`` from this process until it is stopped, with
    a ``mailpipe check worker`` beside it (``quality_worker``) for the post-run checks.

    Schedules stay active when it stops (``pause_on_shutdown=False``): a restart picks up where
    it left off, and a worker can take over. The environment the deployments give their runs
    (``work_pool.job_variables.env``) is applied to this process where it is not set already.
    """
    from prefect import serve

    settings = settings or get_settings()
    project = project or project_dir(settings)
    specs = load_deployment_specs(project_file(project))
    if names:
        unknown = sorted(set(names) - {s.name for s in specs})
        if unknown:
            raise ConfigError(
                f"no deployment named {', '.join(unknown)} in {PROJECT_FILE}; "
                f"choose from {', '.join(s.name for s in specs)}"
            )
        specs = [s for s in specs if s.name in names]
    os.chdir(project)
    with prefect_api_errors(require_api()):
        resolved = [
            DeploymentSpec(**r)
            for r in asyncio.run(resolve_templates([dataclasses.asdict(s) for s in specs]))
        ]
        asyncio.run(_give_served_deployments_a_path([s.full_name for s in resolved]))
    for spec in resolved:
        env = (spec.work_pool.get("job_variables") or {}).get("env") or {}
        for key, value in env.items():
            if value not in (None, "") and "{{" not in str(value):
                os.environ.setdefault(key, str(value))
    get_settings.cache_clear()
    checker = start_quality_worker(project=project) if quality_worker else None
    try:
        serve(
            *served_deployments(resolved, timezone=settings.timezone),
            pause_on_shutdown=False,
            limit=limit,
        )
    finally:
        if checker is not None:
            stop_process(checker, grace=15.0)


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


# --- a local Prefect server, and `mailpipe up` -------------------------------------------------


def prefect_executable() -> str:
    """The ``prefect`` command of this environment."""
    local = Path(sys.executable).with_name("prefect")
    if local.exists():
        return str(local)
    found = shutil.which("prefect")
    if not found:
        raise OrchestrationError("the prefect command is not installed here; run `uv sync`")
    return found


def configured_api_url() -> str | None:
    """The Prefect API this process talks to (PREFECT_API_URL or the active profile)."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0


def wait_until_healthy(
    api_url: str,
    *,
    timeout: float = STARTUP_TIMEOUT_SECONDS,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Poll ``/health`` until the API answers; returns the seconds it took."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not alive():
            raise OrchestrationError(f"the Prefect server at {api_url} exited while starting")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.25)
    raise OrchestrationError(
        f"the Prefect server at {api_url} did not answer within {timeout:.0f} s"
    )


def stop_process(
    process: subprocess.Popen[Any], *, timeout: float = 20.0, grace: float = 0.0
) -> int | None:
    """SIGTERM (graceful for Prefect servers, workers and serve), then SIGKILL after timeout.

    ``grace``: seconds to let it finish on its own first (it got the terminal's Ctrl-C too;
    a second signal would make a Prefect worker kill its flow runs).
    """
    if grace and process.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


class LocalPrefectServer:
    """``prefect server start`` as a child process, with a health wait and a clean stop.

    Its database is Prefect's default (SQLite under ``PREFECT_HOME``); for production point
    ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` at a real Postgres with ``pg_trgm`` instead.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 4200,
        ui: bool = True,
        env: Mapping[str, str] | None = None,
        log: IO[bytes] | int | None = None,
    ) -> None:
        self.host, self.port, self.ui = host, port, ui
        self.env = dict(env if env is not None else os.environ)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> LocalPrefectServer:
        """Start the server and wait until it answers (about 20 s on a small machine)."""
        if not port_is_free(self.host, self.port):
            raise OrchestrationError(
                f"port {self.port} is taken (another Prefect server?): pass --port, or set "
                f"PREFECT_API_URL=http://{self.host}:{self.port}/api to use that server"
            )
        command = [
            prefect_executable(),
            "server",
            "start",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if not self.ui:
            command.append("--no-ui")
        env = {**self.env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            self.startup_seconds = wait_until_healthy(
                self.api_url, timeout=timeout, alive=lambda: self.process.poll() is None
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, grace: float = 0.0) -> None:
        """Stop the server (a no-op when it is not running)."""
        if self.process is not None:
            stop_process(self.process, grace=grace)

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def deploy_all(*, api_url: str, project: Path, env: Mapping[str, str] | None = None) -> str:
    """``prefect --no-prompt deploy --all`` in the project; returns its output."""
    environment = {**(env if env is not None else os.environ), "PREFECT_API_URL": api_url}
    result = subprocess.run(
        [prefect_executable(), "--no-prompt", "deploy", "--all"],
        cwd=project,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise OrchestrationError(f"prefect deploy --all failed:\n{tail}")
    return result.stdout


def start_worker(
    *,
    api_url: str,
    pool: str,
    name: str,
    project: Path,
    env: Mapping[str, str] | None = None,
    limit: int | None = None,
    run_once: bool = False,
    output: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """``prefect worker start --pool POOL`` as a child process, run from the project."""
    command = [prefect_executable(), "worker", "start", "--pool", pool, "--name", name]
    if limit is not None:
        command += ["--limit", str(limit)]
    if run_once:
        command.append("--run-once")
    environment = {
        **(env if env is not None else os.environ),
        "PREFECT_API_URL": api_url,
        "MAILPIPE_PROJECT_DIR": str(project),
    }
    return subprocess.Popen(
        command,
        cwd=project,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
    )


def start_quality_worker(
    *, project: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``mailpipe check worker`` as a child process: answers the flows' post-run data-quality
    checks with Great Expectations imported once (see :mod:`mailpipe.quality_worker`)."""
    environment = {**(env if env is not None else os.environ), "MAILPIPE_PROJECT_DIR": str(project)}
    return subprocess.Popen(
        [sys.executable, "-m", "mailpipe", "check", "worker"],
        cwd=project,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class UpReport:
    """What ``up`` started, for printing."""

    api_url: str
    ui_url: str
    started_server: bool
    server_seconds: float | None
    setup: list[SetupStep]
    migrations: list[str]
    deployments: list[str]
    workers: int
    server_log: Path | None
    quality_worker: bool = True


def up(
    *,
    host: str = "127.0.0.1",
    port: int = 4200,
    workers: int = 1,
    quality_worker: bool = True,
    on_ready: Callable[[UpReport], None] | None = None,
    secret_source: SecretSource = env_secret_source,
    settings: Settings | None = None,
) -> UpReport:
    """The whole system on one machine, until Ctrl-C (or SIGTERM); then everything stops.

    Starts a local Prefect server (unless ``PREFECT_API_URL`` or the active profile names one),
    migrates the database, runs :func:`setup_prefect`, deploys ``prefect.yaml``, starts
    ``workers`` worker processes on the work pool and (``quality_worker``) a ``mailpipe check
    worker``, calls ``on_ready`` and waits.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = settings or get_settings()
    project = project_dir(settings)
    specs = load_deployment_specs(project_file(project))
    pools = work_pool_names(specs)
    if not pools:
        raise ConfigError(f"no work pool in {PROJECT_FILE}: nothing for workers to poll")
    # Deployed runs execute in the project folder: so does `up`, so that a relative
    # MAILPIPE_DATA_DIR (the embedded Postgres) is the same folder for both.
    os.chdir(project)

    server: LocalPrefectServer | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}  # what each one is -> the process
    server_log_path: Path | None = None
    report: UpReport | None = None
    received: list[int] = []

    def stop_on(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    # Installed explicitly: a shell that starts `up` in the background ignores SIGINT.
    previous = {sig: signal.signal(sig, stop_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        api_url = configured_api_url()
        ui_url = api_url.removesuffix("/api") if api_url else ""
        if not api_url:
            logs = settings.data_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            server_log_path = logs / "prefect-server.log"
            with server_log_path.open("ab") as log:
                server = LocalPrefectServer(host=host, port=port, log=log).start()
            api_url, ui_url = server.api_url, server.ui_url
        env = {**os.environ, "PREFECT_API_URL": api_url}
        with temporary_settings({PREFECT_API_URL: api_url}):
            applied = asyncio.run(_migrate(settings))
            steps = asyncio.run(
                setup_prefect(settings=settings, secret_source=secret_source, project=project)
            )
        deploy_all(api_url=api_url, project=project, env=env)
        host_name = socket.gethostname()
        for i in range(workers):
            name = f"mailpipe-{host_name}-{i + 1}"
            children[f"worker {name}"] = start_worker(
                api_url=api_url, pool=pools[0], project=project, name=name, env=env
            )
        if quality_worker:
            children["mailpipe check worker"] = start_quality_worker(project=project, env=env)
        report = UpReport(
            api_url=api_url,
            ui_url=ui_url,
            started_server=server is not None,
            server_seconds=server.startup_seconds if server else None,
            setup=steps,
            migrations=applied,
            deployments=[s.full_name for s in specs],
            workers=workers,
            server_log=server_log_path,
            quality_worker=quality_worker,
        )
        if on_ready:
            on_ready(report)
        while True:
            for what, child in children.items():
                if child.poll() is not None:
                    raise OrchestrationError(
                        f"{what} exited with status {child.returncode}; see its output above"
                    )
            if server and server.process and server.process.poll() is not None:
                raise OrchestrationError(f"the Prefect server exited; see {server_log_path}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        if report is None:
            raise  # interrupted while starting
        return report  # Ctrl-C is how `up` is meant to end
    finally:
        # After a Ctrl-C the whole process group got SIGINT: let the children finish first.
        grace = 15.0 if signal.SIGINT in received else 0.0
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan them
        for child in children.values():
            stop_process(child, grace=grace)
        if server is not None:
            server.stop(grace=grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _migrate(settings: Settings) -> list[str]:
    from mailpipe.db import Database
    from mailpipe.migrations import migrate

    async with Database(settings=settings, min_size=1, max_size=1) as db:
        return await migrate(db)
