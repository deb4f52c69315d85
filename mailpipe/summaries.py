"""What the monitoring and snapshot flow runs report: their summary and log lines.

Built from the domain's results (a health report, metrics and alerts, a snapshot run) so the
flows only publish them; nothing here talks to Prefect. A delivery run's report lives with
delivery (:mod:`mailpipe.delivery.summary`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mailpipe.serialization import to_jsonable

if TYPE_CHECKING:
    from mailpipe.alerts import AlertTransition, Evaluation
    from mailpipe.metrics import ProductionMetrics
    from mailpipe.monitoring import HealthReport
    from mailpipe.snapshots import SnapshotRun

# --- monitor_smtp_health ----------------------------------------------------------------------


def health_summary(report: HealthReport) -> dict[str, Any]:
    """Counts of the probes and the providers whose status changed."""
    return {
        "probed": len(report.probes),
        "ok": len(report.probes) - len(report.failed),
        "failed": len(report.failed),
        "suspended": [c.provider_name for c in report.changes if c.kind == "suspended"],
        "recovered": [c.provider_name for c in report.changes if c.kind == "recovered"],
    }


def health_problems(report: HealthReport) -> list[str]:
    """One warning line per failed probe and per status change."""
    return [
        *(f"provider {p.provider_name}: {p.result} ({p.error})" for p in report.failed),
        *(f"provider {c.provider_name} {c.kind}" for c in report.changes),
    ]


# --- monitor_email_production -----------------------------------------------------------------


def production_summary(
    metrics: ProductionMetrics,
    evaluations: Sequence[Evaluation],
    transitions: Sequence[AlertTransition],
    *,
    webhook_delivered: int,
) -> dict[str, Any]:
    """The queue's figures, the rules firing and the alerts that changed."""

    def alerts(kind: str) -> list[str]:
        return [f"{t.alert.rule}:{t.alert.scope}" for t in transitions if t.kind == kind]

    return {
        "queue": {k: to_jsonable(v) for k, v in metrics.queue_row().items()},
        "firing": [f"{e.rule}:{e.scope}:{e.severity}" for e in evaluations if e.state == "firing"],
        "opened": alerts("opened"),
        "escalated": alerts("escalated"),
        "resolved": alerts("resolved"),
        "webhook_delivered": webhook_delivered,
    }


def production_description(metrics: ProductionMetrics, evaluations: Sequence[Evaluation]) -> str:
    """The metrics artifact's description: the headline and the rules firing."""
    firing = [e for e in evaluations if e.state == "firing"]
    text = ", ".join(f"{e.rule} ({e.scope}, {e.severity})" for e in firing) or "none"
    return f"{metrics.summary()}. Firing: {text}."


def production_log_line(metrics: ProductionMetrics, summary: Mapping[str, Any]) -> str:
    """One line for the run log."""
    return (
        f"queue {metrics.queue.due} due, lag {metrics.queue.queue_lag_seconds:.0f}s; "
        f"{len(summary['firing'])} rules firing; opened {len(summary['opened'])}, "
        f"resolved {len(summary['resolved'])}"
    )


# --- snapshot_email_health --------------------------------------------------------------------


def snapshot_summary(run: SnapshotRun) -> dict[str, Any]:
    """The days computed and the rows written."""
    return {
        "start": run.start.isoformat(),
        "end": run.end.isoformat(),
        "timezone": run.timezone,
        "days": len(run.days),
        "rows": sum(len(d.rows) for d in run.days),
        "seconds": round(sum(d.seconds for d in run.days), 3),
    }


def snapshot_log_line(summary: Mapping[str, Any]) -> str:
    """One line for the run log."""
    return (
        "snapshotted {days} day(s) {start}..{end} ({timezone}): {rows} rows in {seconds} s"
    ).format(**summary)
