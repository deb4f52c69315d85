"""The alert lifecycle: opened, firing, resolved, and how transitions are announced.

The rules (:mod:`mailpipe.alert_rules`) judge each scope as ``firing``, ``ok`` or ``no_data``
(too little traffic to judge: the alert keeps its state). The ``alerts`` table holds at most one
firing alert per (rule, scope): a condition that stays true refreshes its alert
(``last_seen_at``, ``occurrences``) instead of opening a new one, a condition that clears
resolves it, and only openings, escalations (warning -> critical) and resolutions are announced.

:class:`Evaluation`, :func:`evaluate_rules` and :func:`required_windows` are imported here from
:mod:`mailpipe.alert_rules` so the monitoring flow reads one module: rules, then lifecycle.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mailpipe.alert_rules import Evaluation, evaluate_rules, grade, required_windows
from mailpipe.config import Settings, get_settings
from mailpipe.db import Database, Jsonb
from mailpipe.metrics import parse_window
from mailpipe.queries import query
from mailpipe.serialization import dumps, to_jsonable

__all__ = [
    "Alert",
    "AlertPlan",
    "AlertTransition",
    "Evaluation",
    "apply_alerts",
    "emit_alert_events",
    "evaluate_rules",
    "grade",
    "log_transitions",
    "notify",
    "plan_alerts",
    "post_alert_webhook",
    "recent_alerts",
    "required_windows",
]

logger = logging.getLogger(__name__)

SEVERITY_RANK = {"warning": 1, "critical": 2}


@dataclass(frozen=True)
class Alert:
    """One row of the ``alerts`` table."""

    id: int
    rule: str
    scope: str
    severity: str
    status: str
    value: float | None
    threshold: float | None
    message: str
    details: dict[str, Any]
    opened_at: dt.datetime
    last_seen_at: dt.datetime
    resolved_at: dt.datetime | None
    occurrences: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Alert:
        """Build from a row of the alerts queries."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (:func:`mailpipe.serialization.to_jsonable`: ISO 8601 datetimes)."""
        return to_jsonable({name: getattr(self, name) for name in self.__dataclass_fields__})


@dataclass(frozen=True)
class AlertTransition:
    """An alert that was opened, escalated or resolved by one evaluation run."""

    kind: str  # opened, escalated, resolved
    alert: Alert

    @property
    def event_name(self) -> str:
        """The Prefect event name: ``mailpipe.alert.opened`` and so on."""
        return f"mailpipe.alert.{self.kind}"

    def text(self) -> str:
        """One line for logs and chat webhooks."""
        a = self.alert
        return f"[{a.severity.upper()}] {self.kind}: {a.rule} ({a.scope}): {a.message}"


@dataclass(frozen=True)
class AlertPlan:
    """What one evaluation run changes in the alerts table (see :func:`plan_alerts`)."""

    to_open: list[Evaluation]
    to_refresh: list[tuple[int, Evaluation]]
    to_resolve: list[int]
    escalated: set[int]


# ---------------------------------------------------------------------------- lifecycle


def plan_alerts(
    firing: Sequence[Mapping[str, Any]], evaluations: Sequence[Evaluation]
) -> AlertPlan:
    """Decide what changes: pure, so the lifecycle is unit-tested without a database.

    - firing and no open alert for (rule, scope): open one;
    - firing and an open alert: refresh it (an escalation if the severity rose);
    - ok and an open alert: resolve it;
    - no_data: leave the alert as it is (too little traffic to say it cleared);
    - an open alert of an evaluated rule whose scope was not evaluated at all (a provider that
      was removed or disabled): resolve it.
    """
    open_by_key = {(a["rule"], a["scope"]): a for a in firing}
    evaluated_rules = {e.rule for e in evaluations}
    seen: set[tuple[str, str]] = set()
    to_open: list[Evaluation] = []
    to_refresh: list[tuple[int, Evaluation]] = []
    to_resolve: list[int] = []
    escalated: set[int] = set()
    for e in evaluations:
        key = (e.rule, e.scope)
        seen.add(key)
        current = open_by_key.get(key)
        if e.state == "firing":
            if current is None:
                to_open.append(e)
            else:
                to_refresh.append((current["id"], e))
                if SEVERITY_RANK[e.severity or "warning"] > SEVERITY_RANK[current["severity"]]:
                    escalated.add(current["id"])
        elif e.state == "ok" and current is not None:
            to_resolve.append(current["id"])
    for key, alert in open_by_key.items():
        if key not in seen and alert["rule"] in evaluated_rules:
            to_resolve.append(alert["id"])
    return AlertPlan(to_open, to_refresh, to_resolve, escalated)


async def apply_alerts(db: Database, evaluations: Sequence[Evaluation]) -> list[AlertTransition]:
    """Record one run's verdicts in ``alerts``; returns what was opened, escalated, resolved.

    One transaction under an advisory lock, so two concurrent runs cannot open the same
    alert twice (the partial unique index would refuse it anyway).
    """
    transitions: list[AlertTransition] = []
    async with db.transaction() as tx:
        await tx.execute(query("alerts_lock"))
        plan = plan_alerts(await tx.fetch_all(query("alerts_firing")), evaluations)
        if plan.to_open:
            rows = await tx.fetch_all(query("alerts_open"), _columns(plan.to_open))
            transitions += [AlertTransition("opened", Alert.from_row(r)) for r in rows]
        if plan.to_refresh:
            params = _columns([e for _, e in plan.to_refresh])
            del params["rules"], params["scopes"]
            params["ids"] = [alert_id for alert_id, _ in plan.to_refresh]
            for row in await tx.fetch_all(query("alerts_refresh"), params):
                if row["id"] in plan.escalated:
                    transitions.append(AlertTransition("escalated", Alert.from_row(row)))
        if plan.to_resolve:
            rows = await tx.fetch_all(query("alerts_resolve"), {"ids": plan.to_resolve})
            transitions += [AlertTransition("resolved", Alert.from_row(r)) for r in rows]
    return transitions


def _columns(evaluations: Sequence[Evaluation]) -> dict[str, list[Any]]:
    return {
        "rules": [e.rule for e in evaluations],
        "scopes": [e.scope for e in evaluations],
        "severities": [e.severity for e in evaluations],
        # floats throughout: psycopg refuses a list mixing int and float
        "values": [None if e.value is None else float(e.value) for e in evaluations],
        "thresholds": [None if e.threshold is None else float(e.threshold) for e in evaluations],
        "messages": [e.message for e in evaluations],
        "details": [Jsonb(e.details, dumps=dumps) for e in evaluations],
    }


async def recent_alerts(db: Database, window: dt.timedelta | str = "24h") -> list[Alert]:
    """Firing alerts and those resolved within ``window``, firing first."""
    span = parse_window(window) if isinstance(window, str) else window
    return [Alert.from_row(r) for r in await db.fetch_all(query("alerts_recent"), {"window": span})]


# ---------------------------------------------------------------------------- notification


def log_transitions(
    transitions: Sequence[AlertTransition],
    log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
) -> None:
    """One log line per transition: warnings for openings and escalations."""
    log = log or logger
    for t in transitions:
        level = logging.INFO if t.kind == "resolved" else logging.WARNING
        log.log(level, "alert %s", t.text())


def emit_alert_events(transitions: Sequence[AlertTransition]) -> int:
    """Emit each transition as a Prefect event (for Automations); returns how many."""
    from mailpipe.runtime import emit

    for t in transitions:
        a = t.alert
        emit(
            t.event_name,
            resource={
                "prefect.resource.id": f"mailpipe.alert.{a.rule}.{a.scope}",
                "prefect.resource.name": f"{a.rule} ({a.scope})",
                "mailpipe.alert.id": str(a.id),
                "mailpipe.alert.rule": a.rule,
                "mailpipe.alert.scope": a.scope,
                "mailpipe.alert.severity": a.severity,
            },
            payload={"text": t.text(), "alert": a.as_dict()},
        )
    return len(transitions)


async def post_alert_webhook(
    transitions: Sequence[AlertTransition], url: str, *, timeout: float = 10.0
) -> int:
    """POST each transition as JSON to ``url``; returns how many were accepted (2xx).

    The body has ``text`` (so a Slack or Mattermost incoming webhook shows it as is),
    ``event`` and ``alert``. Failures are logged with the host only: webhook URLs carry
    tokens.
    """
    delivered = 0
    host = urlsplit(url).hostname or "?"
    for t in transitions:
        body = dumps({"text": t.text(), "event": t.event_name, "alert": t.alert.as_dict()}).encode()
        try:
            status = await asyncio.to_thread(_post_json, url, body, timeout)
        except Exception as exc:
            logger.warning("alert webhook to %s failed: %s", host, type(exc).__name__)
            continue
        if 200 <= status < 300:
            delivered += 1
        else:
            logger.warning("alert webhook to %s answered HTTP %s", host, status)
    return delivered


def _post_json(url: str, body: bytes, timeout: float) -> int:
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("the alert webhook URL must be http(s)")
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # scheme checked above
        return int(response.status)


async def notify(
    transitions: Sequence[AlertTransition],
    settings: Settings | None = None,
    log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
) -> int:
    """Log, emit Prefect events and (when configured) call the webhook for each transition.

    Returns how many webhook calls succeeded (0 without a webhook).
    """
    settings = settings or get_settings()
    log_transitions(transitions, log)
    if not transitions:
        return 0
    emit_alert_events(transitions)
    if settings.alert_webhook_url is None:
        return 0
    return await post_alert_webhook(transitions, settings.alert_webhook_url.get_secret_value())
