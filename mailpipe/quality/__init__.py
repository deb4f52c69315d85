"""Data quality: Great Expectations suites that check the table invariants; GX in, a report out.

Suites are version-controlled JSON in ``expectations/expectations/<table>.json`` (one per
table). ``expectations/great_expectations.yml`` holds no credentials: the connection string and
the results folder are substituted from the runtime environment given to the GX context.

A leaf of the package: it knows nothing of flows, Prefect, alerts or the ``quality_checks``
table (that coordination is :mod:`mailpipe.quality_checks`, beside :mod:`mailpipe.quality_worker`).

- :mod:`~mailpipe.quality.suites`: the suite files' ``meta.mailpipe`` and the policies;
- :mod:`~mailpipe.quality.report`: the result model, its JSON and markdown;
- :mod:`~mailpipe.quality.gx`: the GX runner, the only module importing ``great_expectations``
  (lazily: importing this package stays cheap);
- :mod:`~mailpipe.quality.runs`: one check run (suites chosen, results folder kept tidy);
- :mod:`~mailpipe.quality.sync`: ``mailpipe check --sync-config``.
"""

from __future__ import annotations

from mailpipe.quality.report import ExpectationResult, QualityReport, SuiteResult, log_report
from mailpipe.quality.runs import acheck_after_run, check_after_run, prepare, run_checks
from mailpipe.quality.suites import (
    POLICIES,
    WINDOW_MARGIN,
    QualityConfigError,
    SuiteSpec,
    effective_policy,
    expectations_dir,
    results_dir,
    suite_specs,
    suites_for_flow,
    window_start,
)
from mailpipe.quality.sync import sync_config

__all__ = [
    "POLICIES",
    "WINDOW_MARGIN",
    "ExpectationResult",
    "QualityConfigError",
    "QualityReport",
    "SuiteResult",
    "SuiteSpec",
    "acheck_after_run",
    "check_after_run",
    "effective_policy",
    "expectations_dir",
    "log_report",
    "prepare",
    "results_dir",
    "run_checks",
    "suite_specs",
    "suites_for_flow",
    "sync_config",
    "window_start",
]
