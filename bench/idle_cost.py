"""The CPU an idle minute costs: the deliverer plus the every-minute sweeper (issue 17).

Two setups run one after the other on the same Prefect server and Postgres, each measured for
``--minutes`` after a warm-up (its first sweeper run finished), with the queue empty:

- **hosted** (now): ``mailpipe serve --only process_email_queue``, whose ``mailpipe deliver``
  child executes the sweeper's runs in its own process (mailpipe.deploy.sweeper);
- **baseline** (before): the same serve with ``--no-deliverer``, whose runner starts a
  flow-run process for every run, beside a ``mailpipe deliver --no-sweeper``.

CPU comes from /proc: utime + stime of every process of a setup's tree, plus what they reaped
(cutime + cstime: the flow-run processes), read at the start and the end of the window; the
Prefect server's own CPU likewise. Prints CPU-seconds per idle minute and per hour, by part,
and the ratio hosted / baseline. Linux only.

    uv run python bench/idle_cost.py              # 3 minutes per setup (about 10 minutes)
    uv run python bench/idle_cost.py --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _support import create_database, postgres_server  # noqa: E402

from mailpipe.deploy.server import LocalPrefectServer  # noqa: E402
from mailpipe.testing.smtpd import free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
DEPLOYMENT = "process_email_queue/process_email_queue"


def cpu_of(pid: int) -> float:
    """CPU-seconds of ``pid`` and of the children it reaped; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(f) for f in fields[11:15]) / TICK


def tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def deliverer_pid(roots: list[int]) -> int | None:
    for root in roots:
        for pid in tree(root):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"deliver" in cmdline and b"mailpipe" in b" ".join(cmdline):
                return pid
    return None


def snapshot(roots: list[int], server: int) -> dict[str, float]:
    """CPU-seconds so far of the deliverer's tree, the rest of the setup, and the server."""
    deliverer = deliverer_pid(roots)
    in_deliverer = set(tree(deliverer)) if deliverer else set()
    setup = {pid for root in roots for pid in tree(root)}
    return {
        "deliverer": sum(cpu_of(p) for p in in_deliverer),
        "serve": sum(cpu_of(p) for p in setup - in_deliverer),
        "prefect server": sum(cpu_of(p) for p in tree(server)),
    }


async def finished_runs() -> dict[str, tuple[str, str]]:
    """Id -> (state, who ran it) of the deployment's finished runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(DEPLOYMENT)
        except ObjectNotFound:  # serve has not registered it yet
            return {}
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(
                        any_=[StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]
                    )
                ),
            )
        )
    return {
        str(r.id): (r.state.type.value, (r.labels or {}).get("prefect.worker.name", "serve"))
        for r in runs
    }


def wait_for_runs(count: int, timeout: float) -> dict[str, tuple[str, str]]:
    """Once ``count`` runs of the deployment have finished: all of them."""
    deadline = time.monotonic() + timeout
    while len(runs := asyncio.run(finished_runs())) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} sweeper runs did not finish within {timeout:.0f} s")
        time.sleep(0.5)
    return runs


def measure(
    name: str, commands: list[list[str]], env: dict[str, str], server: int, minutes: float
) -> dict[str, float]:
    before = len(asyncio.run(finished_runs()))
    runs_measured = max(1, round(minutes))
    processes = [
        subprocess.Popen(
            c,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for c in commands
    ]
    roots = [p.pid for p in processes]
    try:
        # Warm-up: imports done, the first run over. The window then runs from one run's end
        # to the end of the Nth after it: N whole idle minutes, each with its sweeper run.
        counted = wait_for_runs(before + 1, timeout=150)
        start, began = snapshot(roots, server), time.monotonic()
        after = wait_for_runs(before + 1 + runs_measured, timeout=runs_measured * 60 + 90)
        end, elapsed = snapshot(roots, server), time.monotonic() - began
        runs = [v for k, v in after.items() if k not in counted]
    finally:
        for p in processes:
            os.killpg(p.pid, signal.SIGINT)
        for p in processes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    per_minute = {k: (end[k] - start[k]) * 60 / elapsed for k in start}
    total = per_minute["deliverer"] + per_minute["serve"]
    print(f"\n{name}: {elapsed / 60:.1f} idle minutes, sweeper runs: {dict(Counter(runs))}")
    for part, value in per_minute.items():
        print(f"  {part:<15} {value:6.2f} CPU-s/min")
    print(
        f"  deliverer + sweeper {total:6.2f} CPU-s/min = {total * 60:6.0f} CPU-s/hour"
        f" (+ server: {(total + per_minute['prefect server']) * 60:6.0f})"
    )
    return {**per_minute, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes", type=int, default=3, help="idle minutes (sweeper runs) measured per setup"
    )
    parser.add_argument("--database-url", help="a Postgres to use instead of an embedded one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mailpipe-idle-") as tmp:
        home = Path(tmp)
        with postgres_server(args.database_url, home / "pg") as admin:
            url = create_database(admin, "mailpipe_idle")
            server_env = {
                "PREFECT_HOME": str(home / "prefect"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
            with (home / "server.log").open("wb") as log:
                server = LocalPrefectServer(
                    port=free_port(), ui=False, env=server_env, log=log
                ).start()
                try:
                    os.environ["PREFECT_API_URL"] = server.api_url
                    env = {
                        **os.environ,
                        **server_env,
                        "DATABASE_URL": url,
                        "PREFECT_API_URL": server.api_url,
                        "MAILPIPE_DATA_DIR": str(home / "data"),
                    }
                    mailpipe = [sys.executable, "-m", "mailpipe"]
                    subprocess.run(
                        [*mailpipe, "setup", "prefect", "--no-prompt"],
                        cwd=ROOT,
                        env=env,
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                    serve = [
                        *mailpipe,
                        "serve",
                        "--only",
                        "process_email_queue",
                        "--no-quality-worker",
                    ]
                    help_text = subprocess.run(
                        [*mailpipe, "serve", "--help"], env=env, capture_output=True, text=True
                    ).stdout
                    if "--no-feedback-receiver" in help_text:
                        serve.append("--no-feedback-receiver")
                    hosted = measure(
                        "hosted: the deliverer executes the sweeper's runs",
                        [serve],
                        env,
                        server.process.pid,
                        args.minutes,
                    )
                    baseline = measure(
                        "baseline: a flow-run process per sweeper run, beside the deliverer",
                        [[*serve, "--no-deliverer"], [*mailpipe, "deliver", "--no-sweeper"]],
                        env,
                        server.process.pid,
                        args.minutes,
                    )
                finally:
                    server.stop()
    print(
        f"\nidle minute, deliverer + sweeper: {hosted['total']:.2f} CPU-s (goal <= 1) vs "
        f"{baseline['total']:.2f} before: ratio {hosted['total'] / baseline['total']:.2f}"
    )


if __name__ == "__main__":
    main()
