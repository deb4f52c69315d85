"""The result model of a data-quality check: per expectation, per suite, per run.

JSON both ways (``as_dict(full=True)`` / ``from_dict``: how a worker's answer travels through
``quality_checks.report``), a markdown summary for the flow run's artifact and one log line per
broken invariant. No Great Expectations here: :mod:`mailpipe.quality.gx` fills these in.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ExpectationResult:
    """One expectation's outcome on one batch."""

    invariant: str  # the stable name, e.g. communication_events.retry_count_within_max
    description: str
    expectation_type: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    element_count: int | None = None
    sample: list[Any] = field(default_factory=list)
    error: str | None = None  # the check could not run (SQL error, database down)

    def summary(self) -> str:
        """One line: what broke and how much."""
        if self.error:
            return f"{self.invariant}: could not be checked ({self.error})"
        of = f" of {self.element_count}" if self.element_count is not None else ""
        return (
            f"{self.invariant}: {self.unexpected_count} unexpected row(s){of} ({self.description})"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "invariant": self.invariant,
            "description": self.description,
            "expectation_type": self.expectation_type,
            "column": self.column,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "element_count": self.element_count,
            "sample": self.sample,
            "error": self.error,
        }


@dataclass
class SuiteResult:
    """One suite's outcome."""

    name: str
    table: str
    policy: str
    window: str | None  # the window's start (ISO 8601), None: whole table
    success: bool
    evaluated: int
    results: list[ExpectationResult]
    docs_url: str | None = None

    @property
    def failed(self) -> list[ExpectationResult]:
        """The expectations that failed or could not run."""
        return [r for r in self.results if not r.success]

    def as_dict(self, *, full: bool = False) -> dict[str, Any]:
        """JSON-ready: the failed expectations only (passing ones carry no information to a
        reader), or with ``full`` every one (what :meth:`from_dict` reads back)."""
        out = {
            "suite": self.name,
            "table": self.table,
            "policy": self.policy,
            "window_since": self.window,
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": [r.as_dict() for r in self.failed],
            "docs_url": self.docs_url,
        }
        if full:
            out["results"] = [r.as_dict() for r in self.results]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteResult:
        """The inverse of ``as_dict(full=True)``."""
        return cls(
            name=data["suite"],
            table=data["table"],
            policy=data["policy"],
            window=data["window_since"],
            success=data["success"],
            evaluated=data["evaluated"],
            results=[ExpectationResult(**r) for r in data["results"]],
            docs_url=data.get("docs_url"),
        )


@dataclass
class QualityReport:
    """What one checkpoint run found, suite by suite."""

    run_name: str
    since: dt.datetime | None
    started_at: dt.datetime
    elapsed_seconds: float
    suites: list[SuiteResult]
    docs_url: str | None = None
    checked_by: str | None = None  # set for post-run checks: "worker host:pid" or "inline ..."

    @property
    def success(self) -> bool:
        """Every suite passed."""
        return all(s.success for s in self.suites)

    @property
    def failures(self) -> list[SuiteResult]:
        """Failed suites whose policy is ``fail``: the flow run must end Failed."""
        return [s for s in self.suites if not s.success and s.policy == "fail"]

    @property
    def warnings(self) -> list[SuiteResult]:
        """Failed suites whose policy is ``warn``: the run stays Completed, an alert fires."""
        return [s for s in self.suites if not s.success and s.policy == "warn"]

    def broken_invariants(self, policy: str | None = None) -> list[str]:
        """Names of the failed expectations (of suites with ``policy`` when given)."""
        return [r.invariant for s in self.suites if policy in (None, s.policy) for r in s.failed]

    def as_dict(self, *, full: bool = False) -> dict[str, Any]:
        """JSON-ready, for ``mailpipe check --json`` and logs; ``full`` keeps every
        expectation's result (stored in ``quality_checks.report``, read by :meth:`from_dict`)."""
        return {
            "run_name": self.run_name,
            "success": self.success,
            "since": self.since.isoformat() if self.since else None,
            "started_at": self.started_at.isoformat(),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "failures": [s.name for s in self.failures],
            "warnings": [s.name for s in self.warnings],
            "suites": [s.as_dict(full=full) for s in self.suites],
            "docs_url": self.docs_url,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityReport:
        """The inverse of ``as_dict(full=True)``."""
        since = data.get("since")
        return cls(
            run_name=data["run_name"],
            since=dt.datetime.fromisoformat(since) if since else None,
            started_at=dt.datetime.fromisoformat(data["started_at"]),
            elapsed_seconds=data["elapsed_seconds"],
            suites=[SuiteResult.from_dict(s) for s in data["suites"]],
            docs_url=data.get("docs_url"),
        )

    def markdown(self) -> str:
        """A summary for a Prefect artifact: failed expectations and sample unexpected rows."""
        verdict = (
            "all invariants hold"
            if self.success
            else f"{len(self.failures)} suite(s) failed, {len(self.warnings)} warning(s)"
        )
        scope = (
            f"rows changed since {self.since.isoformat(timespec='seconds')} in large "
            "tables, whole small tables"
            if self.since
            else "whole tables"
        )
        lines = [
            f"## Data quality ({self.run_name}): {verdict}",
            "",
            f"Checked {scope} in {self.elapsed_seconds:.1f} s"
            + (f" by {self.checked_by}." if self.checked_by else "."),
            "",
            "| suite | policy | result | expectations |",
            "|---|---|---|---|",
        ]
        for s in self.suites:
            result = (
                "passed" if s.success else ("**FAILED**" if s.policy == "fail" else "**warning**")
            )
            lines.append(
                f"| {s.name} | {s.policy} | {result} | "
                f"{s.evaluated - len(s.failed)}/{s.evaluated} |"
            )
        for s in self.suites:
            for r in s.failed:
                lines += ["", f"### {r.invariant} ({s.policy})", "", _md(r.description), ""]
                if r.error:
                    lines.append(f"Could not be checked: `{_md(r.error)}`")
                    continue
                of = f" of {r.element_count}" if r.element_count is not None else ""
                lines.append(f"{r.unexpected_count} unexpected row(s){of}. Sample:")
                lines += ["", *_md_table(r.sample)]
        if self.docs_url:
            lines += ["", f"Data Docs: {self.docs_url}"]
        return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(sample: Sequence[Any]) -> list[str]:
    if not sample:
        return ["(no sample)"]
    if all(isinstance(row, Mapping) for row in sample):
        columns = list(dict.fromkeys(k for row in sample for k in row))
        return [
            f"| {' | '.join(columns)} |",
            f"|{'---|' * len(columns)}",
            *(f"| {' | '.join(_md(str(row.get(c, ''))) for c in columns)} |" for row in sample),
        ]
    return [f"- `{_md(str(value))}`" for value in sample]


def log_report(
    report: QualityReport, logger: logging.Logger | logging.LoggerAdapter[Any] = log
) -> None:
    """One line per broken invariant (error for ``fail`` suites, warning for ``warn``), then
    a summary: who checked, how long, where the Data Docs are."""
    for suite in report.suites:
        for r in suite.failed:
            level = logging.ERROR if suite.policy == "fail" else logging.WARNING
            logger.log(level, "data quality %s (%s): %s", suite.name, suite.policy, r.summary())
    logger.info(
        "data quality %s: %d suite(s), %s in %.1f s%s; Data Docs: %s",
        report.run_name,
        len(report.suites),
        "all invariants hold"
        if report.success
        else f"{len(report.failures)} failed, {len(report.warnings)} warning(s)",
        report.elapsed_seconds,
        f" ({report.checked_by})" if report.checked_by else "",
        report.docs_url,
    )
