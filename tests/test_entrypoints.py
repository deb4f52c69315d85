"""Every deployment of prefect.yaml loads its real flow and its parameters validate (no server).

Parametrised over prefect.yaml itself, so a deployment added there is covered here too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.config import get_settings
from mailpipe.deploy.project import (
    DeploymentSpec,
    enter_project_directory,
    load_deployment_specs,
    project_dir,
)
from mailpipe.errors import ConfigError

PROJECT = Path(__file__).resolve().parent.parent
SPECS = load_deployment_specs(PROJECT / "prefect.yaml")
IDS = [spec.name for spec in SPECS]


def load(spec: DeploymentSpec) -> Any:
    """The flow exactly as a worker loads it: no placeholder flow hides a broken import."""
    from prefect.flows import load_flow_from_entrypoint

    path, _, function = spec.entrypoint.partition(":")
    return load_flow_from_entrypoint(f"{PROJECT / path}:{function}", use_placeholder_flow=False)


def test_prefect_yaml_declares_the_four_pg_cron_jobs_and_the_feedback_flow() -> None:
    assert IDS == [
        "process_email_queue",
        "monitor_smtp_health",
        "monitor_email_production",
        "snapshot_email_health",
        "process_email_feedback",
    ]
    from mailpipe.adoption import SEED_JOBS

    assert set(SEED_JOBS) == set(IDS) - {"process_email_feedback"}  # pg_cron never ran it


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_entrypoint_loads_the_real_flow(spec: DeploymentSpec) -> None:
    flow = load(spec)
    path = spec.entrypoint.partition(":")[0]
    assert flow.name == spec.name == spec.flow_name == Path(path).stem  # one name everywhere
    assert flow.description  # the module's or function's docstring, shown in the UI


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_deployment_parameters_validate(spec: DeploymentSpec) -> None:
    from prefect.exceptions import SignatureMismatchError
    from prefect.utilities.callables import parameter_schema

    flow = load(spec)
    schema = parameter_schema(flow).model_dump()
    assert set(spec.parameters) <= set(schema["properties"])
    assert not schema.get("required")  # scheduled runs pass nothing: every parameter has a default
    validated = flow.validate_parameters(spec.parameters)  # defaults filled in
    assert {name: validated[name] for name in spec.parameters} == spec.parameters
    assert set(flow.validate_parameters({})) == set(schema["properties"])
    with pytest.raises(SignatureMismatchError):  # a typo in prefect.yaml fails here
        flow.validate_parameters({**spec.parameters, "no_such_parameter": 1})


def test_process_email_queue_parameters_are_bounded() -> None:
    from prefect.exceptions import ParameterTypeError

    [spec] = [s for s in SPECS if s.name == "process_email_queue"]
    flow = load(spec)
    assert flow.validate_parameters({"max_events": 30})["max_events"] == 30
    for bad in (
        {"batch_size": 0},
        {"concurrency": 0},
        {"time_budget_seconds": 0},
        {"max_events": 0},
    ):
        with pytest.raises(ParameterTypeError):
            flow.validate_parameters(bad)


def test_prefect_yaml_policy() -> None:
    """Schedules carry the configurable timezone; overlap and late-run policy; portable pull."""
    document = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    assert document["pull"] == [{"mailpipe.deploy.project.enter_project_directory": {}}]
    assert not _absolute_paths(document)
    for spec in SPECS:
        assert spec.description and "mailpipe" in spec.tags
        assert spec.work_pool["name"] == "mailpipe"
        assert [s["timezone"] for s in spec.schedules] == [
            "{{ prefect.variables.mailpipe_timezone }}"
        ]
        expected = 4 if spec.name == "process_email_queue" else 1
        assert spec.concurrency_limit == {"limit": expected, "collision_strategy": "CANCEL_NEW"}
    [queue] = [s for s in SPECS if s.name == "process_email_queue"]
    assert 0 < queue.parameters["time_budget_seconds"] < 60  # ends before the next minute's run


def _absolute_paths(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    return [value] if isinstance(value, str) and value.startswith(("/", "~")) else []


@pytest.mark.parametrize(
    "address",
    [
        "mailpipe.deploy.project.enter_project_directory",  # prefect.yaml's
        "mailpipe.orchestration.enter_project_directory",  # older deployments (the shim)
    ],
)
def test_pull_step_enters_the_project(
    address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.utilities.importtools import import_object

    step = import_object(address)  # as a worker does
    monkeypatch.chdir(tmp_path)
    assert step() == {"directory": str(PROJECT)}
    assert Path.cwd() == PROJECT
    monkeypatch.setenv("MAILPIPE_PROJECT_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="no flows/ folder"):
            enter_project_directory()
        (tmp_path / "flows").mkdir()
        assert project_dir() == tmp_path.resolve()
    finally:
        get_settings.cache_clear()


def test_domain_modules_import_without_heavy_libraries() -> None:
    # A flow that runs every minute pays its imports 1440 times a day: the domain and the CLI
    # import Prefect, Great Expectations and pandas only inside the functions that need them.
    heavy = ["prefect", "great_expectations", "pandas", "pyarrow", "numpy", "sqlalchemy"]
    modules = [
        "mailpipe.cli",
        "mailpipe.orchestration",
        "mailpipe.deploy.project",
        "mailpipe.deploy.setup",
        "mailpipe.deploy.serve",
        "mailpipe.deploy.up",
        "mailpipe.deploy.kept",
        "mailpipe.deploy.recovery",
        "mailpipe.deploy.database",
        "mailpipe.runtime",
        "mailpipe.summaries",
        "mailpipe.db",
        "mailpipe.delivery",
        "mailpipe.delivery.deliverer",
        "mailpipe.cli.deliver",
        "mailpipe.monitoring",
        "mailpipe.metrics",
        "mailpipe.alerts",
        "mailpipe.quality",
        "mailpipe.quality_worker",
        "mailpipe.snapshots",
        "mailpipe.report",
    ]
    code = (
        f"import sys, {', '.join(modules)}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout.replace("'", '"')) == []


def test_setup_without_a_prefect_api_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.main  # noqa: F401  (configure Prefect logging outside CliRunner)
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
    from typer.testing import CliRunner

    from mailpipe.cli import app
    from mailpipe.testing.smtpd import free_port

    monkeypatch.setenv("DATABASE_URL", "postgresql://mailpipe:hunter2@127.0.0.1:1/mailpipe")
    get_settings.cache_clear()
    try:
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            result = CliRunner().invoke(app, ["setup", "prefect", "--no-prompt"])
        assert result.exit_code == 1
        assert "no Prefect API configured" in result.output
        api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
        with temporary_settings({PREFECT_API_URL: api, PREFECT_CLIENT_MAX_RETRIES: 0}):
            result = CliRunner().invoke(app, ["setup", "prefect", "--no-prompt"])
        assert result.exit_code == 1
        assert f"cannot reach the Prefect API at {api}" in result.output
        assert "hunter2" not in result.output
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_flows_are_thin(spec: DeploymentSpec) -> None:
    # A flow reads like a table of contents; what it builds belongs in mailpipe/ (issue 15).
    path = PROJECT / spec.entrypoint.partition(":")[0]
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 60
