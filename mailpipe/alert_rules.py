"""Alert rules: each judges one scope (``all`` or a provider) of a metrics run as ``firing``
(with a severity), ``ok`` or ``no_data`` (too little traffic to judge). Pure functions of
:class:`mailpipe.metrics.ProductionMetrics` and the settings; :mod:`mailpipe.alerts` turns the
verdicts into alerts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailpipe.config import Settings, get_settings
from mailpipe.metrics import ALL, ProductionMetrics, WindowMetrics, parse_windows


@dataclass(frozen=True)
class Evaluation:
    """One rule's verdict on one scope."""

    rule: str
    scope: str
    state: str  # firing, ok or no_data
    severity: str | None = None  # when firing: warning or critical
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def required_windows(settings: Settings | None = None) -> list[str]:
    """The metric windows: configured ones plus those the rules read, shortest first."""
    settings = settings or get_settings()
    return parse_windows(
        ",".join(
            [
                settings.metrics_windows,
                settings.alert_reputation_window,
                settings.alert_failure_window,
                settings.alert_rate_limit_window,
            ]
        )
    )


def grade(
    value: float | None, warning: float | None, critical: float | None
) -> tuple[str, float] | None:
    """``(severity, threshold)`` of the highest threshold ``value`` reaches, else None."""
    if value is None:
        return None
    if critical is not None and value >= critical:
        return "critical", critical
    if warning is not None and value >= warning:
        return "warning", warning
    return None


def evaluate_rules(
    metrics: ProductionMetrics, settings: Settings | None = None
) -> list[Evaluation]:
    """Every rule's verdict on every scope it covers, from one metrics run."""
    s = settings or get_settings()
    reputation, failure = s.alert_reputation_window, s.alert_failure_window
    evaluations: list[Evaluation] = []
    evaluations += _rate_rule(
        metrics,
        "bounce_rate",
        reputation,
        lambda w: w.bounce_rate,
        lambda w: w.sent + w.bounced,
        "bounce rate",
        s.alert_bounce_rate_warning,
        s.alert_bounce_rate_critical,
        s.alert_min_volume,
        # 5xx on RCPT and, from feedback, accepted messages a provider reported bounced.
        lambda w: {
            "bounced": w.bounced,
            "bounced_after_acceptance": w.feedback_bounced,
            "sent": w.sent,
        },
    )
    evaluations += _rate_rule(
        metrics,
        "complaint_rate",
        reputation,
        lambda w: w.complaint_rate,
        lambda w: w.sent,
        "complaint rate",
        s.alert_complaint_rate_warning,
        s.alert_complaint_rate_critical,
        s.alert_min_volume,
        lambda w: {"complaints": w.complaints, "sent": w.sent},
    )
    evaluations += _rate_rule(
        metrics,
        "failure_rate",
        failure,
        lambda w: w.failure_rate,
        lambda w: w.attempts,
        "failure rate",
        s.alert_failure_rate_warning,
        s.alert_failure_rate_critical,
        s.alert_min_volume,
        lambda w: {
            "attempts": w.attempts,
            "retries": w.retries,
            "failed": w.failed,
            "bounced": w.bounced,
            "failovers": w.failovers,
        },
    )
    evaluations.append(_queue_lag(metrics, s))
    evaluations.append(_all_providers_down(metrics))
    rate_limit = _rate_limit(metrics, s)
    if rate_limit is not None:
        evaluations.append(rate_limit)
    return evaluations


def _rate_rule(
    metrics: ProductionMetrics,
    rule: str,
    window: str,
    rate: Callable[[WindowMetrics], float | None],
    volume: Callable[[WindowMetrics], int],
    label: str,
    warning: float | None,
    critical: float | None,
    min_volume: int,
    figures: Callable[[WindowMetrics], dict[str, Any]],
) -> list[Evaluation]:
    results = []
    for w in metrics.scopes(window):
        details = {"window": window, "volume": volume(w), **figures(w)}
        if volume(w) < min_volume:
            results.append(
                Evaluation(
                    rule,
                    w.scope,
                    "no_data",
                    message=f"{volume(w)} messages over {window}, "
                    f"fewer than the {min_volume} needed to judge the {label}",
                    details=details,
                )
            )
            continue
        value = rate(w)
        verdict = grade(value, warning, critical)
        text = f"{label} {_pct(value)} over {window} ({volume(w)} messages)"
        if verdict is None:
            results.append(
                Evaluation(rule, w.scope, "ok", value=value, message=text, details=details)
            )
        else:
            severity, threshold = verdict
            results.append(
                Evaluation(
                    rule,
                    w.scope,
                    "firing",
                    severity,
                    value,
                    threshold,
                    f"{text} >= {severity} threshold {_pct(threshold)}",
                    details,
                )
            )
    return results


def _queue_lag(metrics: ProductionMetrics, s: Settings) -> Evaluation:
    q = metrics.queue
    value = q.queue_lag_seconds
    details = {
        "due": q.due,
        "queued": q.queued,
        "retry_backlog": q.retry_backlog,
        "stuck": q.stuck,
        "oldest_due_at": q.oldest_due_at,
    }
    verdict = grade(value, s.alert_queue_lag_warning_seconds, s.alert_queue_lag_critical_seconds)
    text = f"oldest due event has waited {value:.0f}s ({q.due} due, {q.stuck} stuck)"
    if verdict is None:
        return Evaluation("queue_lag", ALL, "ok", value=value, message=text, details=details)
    severity, threshold = verdict
    return Evaluation(
        "queue_lag",
        ALL,
        "firing",
        severity,
        value,
        threshold,
        f"{text} >= {severity} threshold {threshold:.0f}s",
        details,
    )


def _all_providers_down(metrics: ProductionMetrics) -> Evaluation:
    configured = [p for p in metrics.providers if p.status != "disabled"]
    up = metrics.providers_up
    details = {
        "providers": [
            {
                "name": p.name,
                "status": p.status,
                "last_result": p.last_result,
                "suspended_until": p.suspended_until,
            }
            for p in configured
        ]
    }
    if up > 0:
        return Evaluation(
            "all_providers_down",
            ALL,
            "ok",
            value=up,
            message=f"{up} of {len(configured)} providers up",
            details=details,
        )
    if not configured:
        text = "no SMTP provider is configured (or all are disabled): nothing can be sent"
    else:
        text = "no SMTP provider is up: " + "; ".join(
            f"{p.name} {p.status}" + (f", last probe {p.last_result}" if p.last_result else "")
            for p in configured
        )
    return Evaluation("all_providers_down", ALL, "firing", "critical", 0, 1, text, details)


def _rate_limit(metrics: ProductionMetrics, s: Settings) -> Evaluation | None:
    window = s.alert_rate_limit_window
    total = metrics.window(window)
    if total is None or total.limit_windows_exceeded is None:
        return None
    value = total.limit_windows_exceeded
    offenders = metrics.rate_limit_windows.get(window, [])
    details = {
        "window": window,
        "deferred_attempts": total.deferred,
        "limit_windows": offenders[:20],
    }
    verdict = grade(value, s.alert_rate_limit_warning, s.alert_rate_limit_critical)
    text = f"{value} rate-limit windows deferred sends in the last {window}"
    if offenders:
        text += ": " + ", ".join(
            f"{o['scope']} {o['key']} per {o['window']} ({o['deferred']} deferred, "
            f"limit {o['limit']})"
            for o in offenders[:5]
        )
    if verdict is None:
        return Evaluation(
            "rate_limit_violations", ALL, "ok", value=value, message=text, details=details
        )
    severity, threshold = verdict
    return Evaluation(
        "rate_limit_violations", ALL, "firing", severity, value, threshold, text, details
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.3g}%"
