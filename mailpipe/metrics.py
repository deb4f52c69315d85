"""Production metrics of the mail pipeline over rolling windows, overall and per provider.

``collect_metrics`` is what ``monitor_email_production`` (and ``mailpipe metrics``) reads. Every
figure comes from an index-backed query in ``sql/queries/monitoring.sql``; rates are ``None``
when their denominator is zero (no traffic is not a 0 % failure rate). Definitions are in the
properties of :class:`WindowMetrics` and in README "Monitoring".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from mailpipe.config import Settings, get_settings
from mailpipe.db import Database
from mailpipe.errors import ConfigError, DatabaseError
from mailpipe.queries import query
from mailpipe.values import parse_duration

ALL = "all"  # the scope of figures over every provider


def parse_window(text: str) -> dt.timedelta:
    """``"5m"`` -> 5 minutes (:func:`mailpipe.values.parse_duration`: units s, m, h, d, w);
    raises :class:`ConfigError` naming the window otherwise."""
    return parse_duration(text, "window")


def parse_windows(text: str) -> list[str]:
    """``"5m,1h,24h"`` -> the labels, validated, shortest first, without duplicates."""
    labels = [w.strip() for w in text.split(",") if w.strip()]
    if not labels:
        raise ConfigError("MAILPIPE_METRICS_WINDOWS is empty; use e.g. 5m,1h,24h")
    unique = {parse_window(label): label for label in reversed(labels)}
    return [unique[w] for w in sorted(unique)]


@dataclass(frozen=True)
class QueueMetrics:
    """The outbox now (not windowed)."""

    queued: int  # status queued, due or scheduled later
    due: int  # queued and scheduled_at <= now
    oldest_due_at: dt.datetime | None
    queue_lag_seconds: float  # age of the oldest due event (0 with none due)
    retry_backlog: int  # due events waiting for a retry (retry_count > 0)
    processing: int  # claimed under a lease
    stuck: int  # processing with the lease expired (a crashed worker)
    oldest_expired_lease: dt.datetime | None


@dataclass
class WindowMetrics:
    """Delivery figures of one scope (``all`` or a provider) over one rolling window."""

    window: str
    seconds: float
    scope: str
    sent: int = 0  # messages accepted (smtp_delivery_confirmations)
    complaints: int = 0  # of those, marked complained by a feedback loop
    feedback_bounced: int = 0  # of those, reported hard-bounced later (feedback)
    retries: int = 0  # delivery_attempts outcomes...
    failed: int = 0
    bounced: int = 0
    failovers: int = 0
    deferred: int = 0  # rate-limit deferrals
    suppressed: int = 0
    probes: int = 0  # smtp_connection_audit rows
    probes_ok: int = 0
    suppressions_added: int | None = None  # scope all only
    limit_windows_exceeded: int | None = None  # scope all only (see rate_limit_violations)

    @property
    def attempts(self) -> int:
        """SMTP delivery attempts: accepted + retried + failed + bounced + failed over."""
        return self.sent + self.retries + self.failed + self.bounced + self.failovers

    @property
    def send_rate_per_minute(self) -> float:
        """Accepted messages per minute over the window."""
        return self.sent * 60.0 / self.seconds

    @property
    def failure_rate(self) -> float | None:
        """Attempts that did not end accepted (retry, failed, bounced, failover) / attempts."""
        return _ratio(self.attempts - self.sent, self.attempts)

    @property
    def bounce_rate(self) -> float | None:
        """Hard bounces / messages that reached a provider (the SES reputation bounce rate):
        (5xx on RCPT + accepted then reported bounced) / (accepted + 5xx on RCPT)."""
        return _ratio(self.bounced + self.feedback_bounced, self.sent + self.bounced)

    @property
    def complaint_rate(self) -> float | None:
        """Complaints / accepted. 0 until a feedback loop marks confirmations complained."""
        return _ratio(self.complaints, self.sent)

    @property
    def availability(self) -> float | None:
        """Successful probes / probes."""
        return _ratio(self.probes_ok, self.probes)

    def as_row(self) -> dict[str, Any]:
        """A flat row for tables, artifacts and JSON."""
        return {
            "window": self.window,
            "scope": self.scope,
            "sent": self.sent,
            "send_rate_per_min": round(self.send_rate_per_minute, 2),
            "attempts": self.attempts,
            "retries": self.retries,
            "failed": self.failed,
            "bounced": self.bounced,
            "bounced_after_acceptance": self.feedback_bounced,
            "complaints": self.complaints,
            "failovers": self.failovers,
            "failure_rate": _round(self.failure_rate),
            "bounce_rate": _round(self.bounce_rate),
            "complaint_rate": _round(self.complaint_rate),
            "deferred": self.deferred,
            "suppressed": self.suppressed,
            "suppressions_added": self.suppressions_added,
            "limit_windows_exceeded": self.limit_windows_exceeded,
            "probes": self.probes,
            "availability": _round(self.availability),
        }


@dataclass(frozen=True)
class ProviderState:
    """A provider now: status, score and its latest probe."""

    name: str
    status: str
    suspended_until: dt.datetime | None
    health_score: float
    last_checked: dt.datetime | None
    last_result: str | None
    consecutive_failures: int
    usable: bool  # active, or suspended with the suspension over (half-open)

    @property
    def up(self) -> bool:
        """Usable and its latest probe (if any) passed: mail can go through it now."""
        return self.usable and self.last_result in (None, "ok")


@dataclass
class ProductionMetrics:
    """Everything monitor_email_production measured in one run."""

    measured_at: dt.datetime
    queue: QueueMetrics
    windows: list[WindowMetrics]
    providers: list[ProviderState]
    rate_limit_windows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def window(self, label: str, scope: str = ALL) -> WindowMetrics | None:
        """The figures of one window and scope, if measured."""
        return next((w for w in self.windows if w.window == label and w.scope == scope), None)

    def scopes(self, label: str) -> list[WindowMetrics]:
        """Every scope measured over one window (``all`` first)."""
        return [w for w in self.windows if w.window == label]

    @property
    def providers_up(self) -> int:
        """Providers mail can go through now."""
        return sum(p.up for p in self.providers if p.status != "disabled")

    def queue_row(self) -> dict[str, Any]:
        """The queue figures as one row."""
        q = self.queue
        return {
            "queued": q.queued,
            "due": q.due,
            "queue_lag_s": round(q.queue_lag_seconds, 1),
            "oldest_due_at": q.oldest_due_at,
            "retry_backlog": q.retry_backlog,
            "processing": q.processing,
            "stuck": q.stuck,
            "providers_up": self.providers_up,
            "providers": sum(p.status != "disabled" for p in self.providers),
        }

    def summary(self) -> str:
        """One line for logs and artifact descriptions."""
        q = self.queue
        return (
            f"At {self.measured_at:%Y-%m-%d %H:%M:%S %Z}: {q.queued} queued, {q.due} due, "
            f"lag {q.queue_lag_seconds:.0f}s, {q.retry_backlog} awaiting retry, "
            f"{q.processing} processing ({q.stuck} past their lease), "
            f"{self.providers_up} of "
            f"{sum(p.status != 'disabled' for p in self.providers)} providers up"
        )

    def provider_rows(self) -> list[dict[str, Any]]:
        """One row per provider."""
        return [
            {
                "provider": p.name,
                "status": p.status,
                "up": p.up,
                "health_score": p.health_score,
                "last_result": p.last_result,
                "last_checked": p.last_checked,
                "suspended_until": p.suspended_until,
                "consecutive_failures": p.consecutive_failures,
            }
            for p in self.providers
        ]

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (datetimes left to the serialiser)."""
        return {
            "measured_at": self.measured_at,
            "queue": self.queue_row(),
            "windows": [w.as_row() for w in self.windows],
            "providers": self.provider_rows(),
            "rate_limit_windows": self.rate_limit_windows,
        }


async def collect_metrics(
    db: Database, windows: list[str] | None = None, settings: Settings | None = None
) -> ProductionMetrics:
    """Measure the queue now and deliveries over each rolling window (labels like ``5m``)."""
    settings = settings or get_settings()
    labels = windows or parse_windows(settings.metrics_windows)
    queue_row = await db.fetch_one(query("metrics_queue"))
    if queue_row is None:  # an aggregate always returns a row; guard for the type checker
        raise DatabaseError("metrics_queue returned no row")
    measured_at: dt.datetime = queue_row["measured_at"]
    oldest_due = queue_row["oldest_due_at"]
    queue = QueueMetrics(
        queued=queue_row["queued"],
        due=queue_row["due"],
        oldest_due_at=oldest_due,
        queue_lag_seconds=max(0.0, (measured_at - oldest_due).total_seconds())
        if oldest_due
        else 0.0,
        retry_backlog=queue_row["retry_backlog"],
        processing=queue_row["processing"],
        stuck=queue_row["stuck"],
        oldest_expired_lease=queue_row["oldest_expired_lease"],
    )

    state_rows = await db.fetch_all(query("metrics_provider_states"))
    providers = [
        ProviderState(
            name=r["provider_name"],
            status=r["status"],
            suspended_until=r["suspended_until"],
            health_score=r["health_score"],
            last_checked=r["last_checked"],
            last_result=r["last_result"],
            consecutive_failures=r["consecutive_failures"],
            usable=r["status"] == "active"
            or (
                r["status"] == "suspended"
                and (r["suspended_until"] is None or r["suspended_until"] <= r["measured_at"])
            ),
        )
        for r in state_rows
    ]
    configured = [p.name for p in providers if p.status != "disabled"]

    result: list[WindowMetrics] = []
    limit_windows: dict[str, list[dict[str, Any]]] = {}
    for label in labels:
        span = parse_window(label)
        params = {"window": span}
        scopes: dict[str, WindowMetrics] = {
            name: WindowMetrics(label, span.total_seconds(), name) for name in configured
        }
        total = WindowMetrics(label, span.total_seconds(), ALL)
        for row in await db.fetch_all(query("metrics_delivery_by_provider"), params):
            targets = [total]
            if row["provider_name"] is not None:
                targets.append(
                    scopes.setdefault(
                        row["provider_name"],
                        WindowMetrics(label, span.total_seconds(), row["provider_name"]),
                    )
                )
            for target in targets:
                for name in (
                    "sent",
                    "complaints",
                    "feedback_bounced",
                    "retries",
                    "failed",
                    "bounced",
                    "failovers",
                    "deferred",
                    "suppressed",
                ):
                    setattr(target, name, getattr(target, name) + int(row[name]))
        for row in await db.fetch_all(query("metrics_probes_by_provider"), params):
            targets = [total]
            if row["provider_name"] in scopes:
                targets.append(scopes[row["provider_name"]])
            for target in targets:
                target.probes += row["probes"]
                target.probes_ok += row["probes_ok"]
        total.suppressions_added = sum(
            r["added"] for r in await db.fetch_all(query("metrics_suppressions_added"), params)
        )
        exceeded = await db.fetch_all(query("metrics_rate_limit_windows"), params)
        total.limit_windows_exceeded = len(exceeded)
        limit_windows[label] = [
            {
                "scope": r["scope"],
                "key": r["key"],
                "window": r["window_size"],
                "window_start": r["window_start"],
                "count": r["count"],
                "limit": r["limit_value"],
                "deferred": r["deferred"],
            }
            for r in exceeded
        ]
        result.append(total)
        result.extend(scopes[name] for name in sorted(scopes))
    return ProductionMetrics(measured_at, queue, result, providers, limit_windows)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
