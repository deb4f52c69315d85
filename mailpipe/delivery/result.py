"""What a drain did: the counts of one drainer, of a run's drainers together, of a run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailpipe.delivery.outcomes import OUTCOMES

if TYPE_CHECKING:
    from mailpipe.delivery.recording import BatchRecord


@dataclass
class DrainResult:
    """What a drain did: events per outcome word, where they went, and where time went."""

    worker: str
    counts: Counter[str] = field(default_factory=Counter)  # outcome word -> events
    failed_by_reason: Counter[str] = field(default_factory=Counter)  # error_class -> events
    batches: int = 0
    rescued: int = 0
    elapsed_seconds: float = 0.0
    stopped_by: str = "empty"  # empty, time_budget, max_events, stopped (a sibling failed)
    by_provider: Counter[str] = field(default_factory=Counter)  # provider -> sent
    attempts: int = 0  # task attempts added into this result (drain_run)

    @property
    def events(self) -> int:
        """Events finished, whatever their outcome."""
        return sum(self.counts.values())

    def add_batch(self, record: BatchRecord) -> None:
        """Count a recorded batch."""
        self.counts.update(record.counts)
        self.failed_by_reason.update(
            f.error_class or "unknown" for f in record.finished if f.status == "failed"
        )
        self.by_provider.update(record.by_provider)
        self.batches += 1

    def summary(self) -> dict[str, Any]:
        """Counts for logs, artifacts and the CLI (the outcome words of OUTCOMES)."""
        return {
            **{o: self.counts.get(o, 0) for o in OUTCOMES},
            "failed_by_reason": dict(self.failed_by_reason),
            "rescued": self.rescued,
            "batches": self.batches,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "rate_per_second": round(self.counts.get("sent", 0) / self.elapsed_seconds, 1)
            if self.elapsed_seconds
            else 0.0,
            "stopped_by": self.stopped_by,
            "by_provider": dict(self.by_provider),
        }

    def merge(self, other: DrainResult) -> None:
        """Add another drainer's result (several drainers side by side in one run)."""
        self.counts.update(other.counts)
        self.failed_by_reason.update(other.failed_by_reason)
        self.batches += other.batches
        self.rescued += other.rescued
        self.by_provider.update(other.by_provider)
        self.elapsed_seconds = max(self.elapsed_seconds, other.elapsed_seconds)


def combine_results(results: list[DrainResult]) -> DrainResult:
    """One result for drainers that ran side by side (on one loop or in processes)."""
    total = DrainResult(worker=",".join(r.worker for r in results))
    for r in results:
        total.merge(r)
    total.stopped_by = results[0].stopped_by
    return total
