"""Run the reliability tier and print its figures (events, faults injected, lost, duplicated).

    uv run python bench/reliability_figures.py            # CI sizes (~2 minutes on 2 cores)
    uv run python bench/reliability_figures.py --heavy    # plus 4 x 20k, 20k faults, 20 kills
    uv run python bench/reliability_figures.py --json out.json

The suites record what they measured (tests/reliability/support.py: Figures) into the file
named by RELIABILITY_FIGURES; this script sets it, runs pytest on tests/reliability, and
prints one Markdown table per suite, ready for docs/reliability.md. Exits with pytest's code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Columns shown first when a suite has them; the rest follow in the order recorded.
FIRST = [
    "case",
    "events",
    "faults_injected",
    "in_flight",
    "lost",
    "duplicated",
    "unrecorded",
    "ambiguous",
    "status_sent",
    "status_failed",
]
HIDDEN = {"suite", "accepted_messages"}


def table(rows: list[dict[str, Any]]) -> str:
    """One Markdown table; nested values (fault counts) are shown as key=value lists."""
    columns = [c for c in FIRST if any(c in r for r in rows)]
    columns += [c for r in rows for c in r if c not in columns and c not in HIDDEN]
    columns = list(dict.fromkeys(columns))

    def cell(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heavy", action="store_true", help="also run the heavy sizes")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k crash)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mailpipe-reliability-") as tmp:
        figures = Path(tmp) / "figures.json"
        # Our own pytest temp root: another pytest session resets /tmp/pytest-of-<user> to
        # 0700, which locks the embedded Postgres of a session already running out of it.
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "tests/reliability",
            f"--basetemp={Path(tmp) / 'pytest'}",
            "-p",
            "no:cacheprovider",
            *(["--heavy"] if args.heavy else []),
            *args.pytest_args,
        ]
        env = {**os.environ, "RELIABILITY_FIGURES": str(figures)}
        code = subprocess.run(command, cwd=ROOT, env=env).returncode
        rows = json.loads(figures.read_text()) if figures.exists() else []
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    for suite in dict.fromkeys(r["suite"] for r in rows):
        print(f"\n### {suite}\n\n{table([r for r in rows if r['suite'] == suite])}")
    if rows:
        lost = sum(r.get("lost", 0) for r in rows)
        duplicated = sum(r.get("duplicated", 0) for r in rows)
        in_flight = sum(r.get("in_flight", 0) for r in rows)
        print(
            f"\nTotal: {sum(r.get('events', 0) for r in rows)} events, "
            f"{sum(r.get('faults_injected', 0) for r in rows)} SMTP faults injected, "
            f"lost {lost}, duplicated {duplicated} (in flight at a crash or lost "
            f"connection: {in_flight})."
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
