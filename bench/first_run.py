"""Benchmark: how long ``mailpipe run process_email_queue`` takes from a cold shell.

Run by hand (not a test):

    uv run python bench/first_run.py                 # as installed (CI compiles bytecode)
    uv run python bench/first_run.py --no-bytecode   # as if installed without .pyc files
    uv run python bench/first_run.py --old           # also the old temporary-server path

Every figure is the wall time of a fresh ``python -m mailpipe run process_email_queue``
process (a cold shell: nothing imported, nothing cached in memory) on an empty queue, with no
Prefect API configured (``PREFECT_API_URL`` unset, an empty Prefect profile), in a temporary
``MAILPIPE_DATA_DIR`` whose embedded Postgres is started and migrated first:

- first: the very first run, which starts the kept Prefect server and creates its database;
- cold: the kept server stopped (``mailpipe server stop``) before each run: it starts it again;
- warm: the kept server already up (the usual case: it keeps running);
- old (``--old``): Prefect's temporary server, started and thrown away by every run (what
  ``mailpipe run`` did before the kept server).

The baseline is ``python -c "import prefect"`` (the least a Prefect command costs). Goals on
the development machine: cold <= 8 s, warm <= 4 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"cold": 8.0, "warm": 4.0}

# The old path: the flow run in-process with no API, so Prefect starts its temporary server.
OLD_RUN = (
    "import asyncio; from flows.process_email_queue import process_email_queue; "
    "asyncio.run(process_email_queue())"
)


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one command (it must succeed)."""
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    if "Traceback" in result.stdout + result.stderr and command[-1] == "process_email_queue":
        sys.exit(f"a traceback was printed:\n{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--old", action="store_true", help="also time the temporary server")
    parser.add_argument(
        "--no-bytecode", action="store_true", help="ignore installed .pyc files (compile all)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mailpipe-first-run-") as tmp:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MAILPIPE_")) and k != "DATABASE_URL"
        }
        env.update(MAILPIPE_DATA_DIR=f"{tmp}/data", PREFECT_HOME=f"{tmp}/client-home")
        if args.no_bytecode:
            # Python looks for .pyc files only under this empty folder and writes none.
            env.update(PYTHONPYCACHEPREFIX=f"{tmp}/no-pycache", PYTHONDONTWRITEBYTECODE="1")
        mailpipe = [sys.executable, "-m", "mailpipe"]
        run = [*mailpipe, "run", "process_email_queue"]
        stop = [*mailpipe, "server", "stop"]
        subprocess.run([*mailpipe, "db", "migrate"], cwd=ROOT, env=env, check=True)
        figures: dict[str, list[float]] = {}
        try:
            figures["import prefect"] = [
                timed([sys.executable, "-c", "import prefect"], env) for _ in range(args.repeat)
            ]
            figures["first"] = [timed(run, env)]
            figures["warm"] = [timed(run, env) for _ in range(args.repeat)]
            figures["cold"] = []
            for _ in range(args.repeat):
                timed(stop, env)
                figures["cold"].append(timed(run, env))
            if args.old:
                timed(stop, env)
                # Prefect's 20 s default for its temporary server is too short here.
                slow = {**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
                figures["old"] = [timed([sys.executable, "-c", OLD_RUN], slow)]
        finally:
            subprocess.run(stop, cwd=ROOT, env=env, capture_output=True)
            subprocess.run([*mailpipe, "db", "stop"], cwd=ROOT, env=env, capture_output=True)

    baseline = statistics.median(figures["import prefect"])
    old = statistics.median(figures["old"]) if "old" in figures else None
    mode = "without bytecode" if args.no_bytecode else "as installed"
    print(f"mailpipe run process_email_queue, empty queue, {mode} (median of runs):")
    print(f"{'':16} {'seconds':>8} {'x import prefect':>17} {'x old path':>11}  goal")
    for name, values in figures.items():
        seconds = statistics.median(values)
        versus_old = f"{seconds / old:11.2f}" if old else f"{'-':>11}"
        goal = GOALS.get(name)
        verdict = f"<= {goal:.0f} s {'met' if seconds <= goal else 'MISSED'}" if goal else ""
        print(f"{name:16} {seconds:8.2f} {seconds / baseline:17.2f} {versus_old}  {verdict}")


if __name__ == "__main__":
    main()
