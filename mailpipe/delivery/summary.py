"""How a delivery run is reported: one log line, one table and one page, in the outcome words."""

from __future__ import annotations

from typing import Any

from mailpipe.delivery.outcomes import OUTCOMES

# What a run's summary counts, in the order people read it.
SUMMARY_COUNTS = (*OUTCOMES, "rescued")


def did_anything(summary: dict[str, Any]) -> bool:
    """The run finished or rescued at least one event (worth a data-quality check)."""
    return any(summary.get(k) for k in SUMMARY_COUNTS)


def log_line(summary: dict[str, Any]) -> str:
    """One line: ``sent 4, retry 1, failed 2 (bounced 1, rejected 1), ... in 1.2s``."""
    reasons = summary.get("failed_by_reason") or {}
    failed = f"failed {summary['failed']}"
    if reasons:
        failed += " (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")"
    counts = [f"{k} {summary[k]}" if k != "failed" else failed for k in SUMMARY_COUNTS]
    return (
        f"{', '.join(counts)} in {summary['elapsed_seconds']:.1f}s "
        f"({summary['rate_per_second']:.0f}/s, stopped by {summary['stopped_by']})"
    )


def table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per outcome (and rescued), for a table artifact."""
    return [{"outcome": k, "events": summary[k]} for k in SUMMARY_COUNTS]


def markdown(summary: dict[str, Any]) -> str:
    """The run's report page: the counts, then messages sent per provider."""
    reasons = summary.get("failed_by_reason") or {}
    why = " (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")" if reasons else ""
    providers = "\n".join(f"| {name} | {n} |" for name, n in summary["by_provider"].items())
    return (
        f"## process_email_queue\n\n**{summary['sent']} sent** in "
        f"{summary['elapsed_seconds']:.1f} s ({summary['rate_per_second']:.0f}/s), "
        f"{summary['retry']} retry, {summary['failed']} failed{why}, "
        f"{summary['deferred']} deferred, {summary['suppressed']} suppressed; "
        f"{summary['rescued']} rescued from expired leases. "
        f"Stopped by: {summary['stopped_by']}.\n\n"
        f"| provider | sent |\n|---|---|\n{providers}\n"
    )
