"""The deliverer's deployment examples (systemd, Docker Compose, Kubernetes) start the command
the other deliverer tests run, with a stop grace long enough for the batch in hand."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from mailpipe.cli import app

FOLDER = Path(__file__).resolve().parents[2] / "deployments"


def test_the_examples_run_mailpipe_deliver_and_let_it_finish_its_batch() -> None:
    unit = (FOLDER / "process" / "mailpipe-deliver.service").read_text()
    assert "ExecStart=/srv/mailpipe/.venv/bin/mailpipe deliver\n" in unit
    assert "KillSignal=SIGTERM" in unit and "TimeoutStopSec=60" in unit
    compose = yaml.safe_load((FOLDER / "docker" / "deliverer.compose.yaml").read_text())
    service = compose["services"]["mailpipe-deliver"]
    assert service["command"] == ["mailpipe", "deliver"]
    assert service["stop_signal"] == "SIGTERM" and service["stop_grace_period"] == "60s"
    [deployment] = yaml.safe_load_all((FOLDER / "kubernetes" / "deliverer.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["mailpipe", "deliver"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    # PREFECT_API_URL set: the deliverer hosts the sweeper (its default with an API).
    assert "PREFECT_API_URL" in {e["name"] for e in container["env"]}


def test_the_command_they_run_exists_with_its_sweeper_switch() -> None:
    result = CliRunner().invoke(app, ["deliver", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--sweeper" in result.output and "--no-sweeper" in result.output
