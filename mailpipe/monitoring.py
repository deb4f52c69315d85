"""SMTP provider health: concurrent probes, the connection audit, health scores, suspension.

``check_providers`` is what ``monitor_smtp_health`` (and ``mailpipe health check``) runs: every
provider that is not disabled is probed at once, each probe under its own timeout; one
``smtp_connection_audit`` row is written per probe; each provider's ``health_score`` and
``last_checked`` are updated; a failed probe counts against the provider (suspension with capped
backoff, see :func:`mailpipe.providers.record_provider_failure`) and a passed probe closes its
circuit (a suspended provider that answers again becomes active: half-open recovery).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailpipe.config import Settings, get_settings
from mailpipe.db import Database
from mailpipe.providers import (
    CredentialsError,
    Provider,
    load_providers,
    record_provider_failure,
    record_provider_success,
    resolve_password,
)
from mailpipe.queries import query
from mailpipe.smtp import ProbeSession, probe_session

logger = logging.getLogger(__name__)

# Health score weights (see health_score and README "Monitoring").
PROBE_WEIGHT, LATENCY_WEIGHT, DELIVERY_WEIGHT = 0.5, 0.2, 0.3
PROBE_DECAY = 0.7  # each older probe counts 0.7 times the one after it
FAILED_PROBE_CAP = 50.0  # a provider whose latest probe failed scores at most this


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one provider: what ``smtp_connection_audit`` records."""

    provider_name: str
    host: str
    port: int
    attempted_at: dt.datetime
    result: str  # one of mailpipe.smtp.AUDIT_RESULTS
    latency_ms: float
    ip_address: str | None  # the address actually connected to (None: never connected)
    error: str | None = None  # what went wrong, never a secret

    @property
    def ok(self) -> bool:
        """The provider answered the whole session (connect, TLS, AUTH, NOOP, QUIT)."""
        return self.result == "ok"


@dataclass(frozen=True)
class StatusChange:
    """A provider whose status a health check changed (suspended, or recovered to active)."""

    provider_name: str
    before: str
    after: str
    suspended_until: dt.datetime | None

    @property
    def kind(self) -> str:
        """``suspended`` or ``recovered`` (the Prefect event suffix)."""
        return "suspended" if self.after == "suspended" else "recovered"


@dataclass
class HealthReport:
    """What a health check found and changed."""

    checked_at: dt.datetime
    probes: list[ProbeResult]
    providers: list[Provider] = field(default_factory=list)  # after the check
    changes: list[StatusChange] = field(default_factory=list)
    recorded: bool = True  # False for a dry run: nothing was written

    @property
    def failed(self) -> list[ProbeResult]:
        """Probes that did not pass."""
        return [p for p in self.probes if not p.ok]

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per probed provider, for tables and artifacts (no secrets)."""
        by_name = {p.name: p for p in self.providers}
        rows = []
        for probe in self.probes:
            provider = by_name.get(probe.provider_name)
            rows.append(
                {
                    "provider": probe.provider_name,
                    "endpoint": f"{probe.host}:{probe.port}",
                    "result": probe.result,
                    "ip_address": probe.ip_address,
                    "latency_ms": round(probe.latency_ms, 1),
                    "health_score": provider.health_score if provider and self.recorded else None,
                    "status": provider.status if provider else None,
                    "suspended_until": provider.suspended_until if provider else None,
                    "error": probe.error,
                }
            )
        return rows


def health_score(
    recent_ok: Sequence[bool],
    latency_ms: float | None,
    delivered: int,
    delivery_failures: int,
    *,
    good_ms: float = 500.0,
    bad_ms: float = 5000.0,
) -> float:
    """A provider's health, 0-100, from its recent probes, their latency and its deliveries.

    - ``recent_ok``: the latest probes, newest first. Probe term P = their success ratio
      weighted 1, 0.7, 0.49, ... (0.7**i for the i-th newest), so recent probes dominate.
    - ``latency_ms``: the median latency of the recent successful probes. Latency term
      L = 1 up to ``good_ms``, 0 from ``bad_ms`` (or with no successful probe), linear between.
    - ``delivered`` / ``delivery_failures``: messages the provider accepted and
      provider-attributable failures (retry, failed, failover) over the health window.
      Delivery term D = delivered / (delivered + failures).

    Score = 100 * (0.5 P + 0.2 L + 0.3 D); with no delivery in the window D is unknown and the
    score is 100 * (0.5 P + 0.2 L) / 0.7. When the latest probe failed the score is capped at
    50, so a provider that is down now never outranks one that answers. Rounded to 0.1.
    """
    if not recent_ok:
        raise ValueError("health_score needs at least one probe")
    if bad_ms <= good_ms:
        raise ValueError("bad_ms must be greater than good_ms")
    weights = [PROBE_DECAY**i for i in range(len(recent_ok))]
    probe = sum(w for w, ok in zip(weights, recent_ok, strict=True) if ok) / sum(weights)
    if latency_ms is None:
        latency = 0.0
    else:
        latency = min(1.0, max(0.0, (bad_ms - latency_ms) / (bad_ms - good_ms)))
    attempts = delivered + delivery_failures
    if attempts > 0:
        score = (
            PROBE_WEIGHT * probe + LATENCY_WEIGHT * latency + DELIVERY_WEIGHT * delivered / attempts
        )
    else:
        score = (PROBE_WEIGHT * probe + LATENCY_WEIGHT * latency) / (PROBE_WEIGHT + LATENCY_WEIGHT)
    score *= 100.0
    if not recent_ok[0]:
        score = min(score, FAILED_PROBE_CAP)
    return round(score, 1)


async def probe_provider(
    provider: Provider, *, timeout: float | None = None, settings: Settings | None = None
) -> ProbeResult:
    """Open a real SMTP session (connect, EHLO, TLS as configured, AUTH, NOOP, QUIT).

    The whole probe runs under one timeout (``timeout``, else the provider's
    ``timeout_seconds``). Never raises: every failure becomes a :class:`ProbeResult` whose
    ``result`` is in the audit vocabulary and whose ``error`` contains no secret.
    """
    settings = settings or get_settings()
    limit = timeout or settings.probe_timeout_seconds or provider.timeout_seconds
    attempted_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    try:
        password = await resolve_password(provider)
    except CredentialsError as exc:
        session = ProbeSession("config_error", None, str(exc))
    else:
        session = await probe_session(provider, password, timeout=limit, settings=settings)
    latency_ms = (time.perf_counter() - started) * 1000.0
    return ProbeResult(
        provider.name,
        provider.host,
        provider.port,
        attempted_at,
        session.result,
        latency_ms,
        session.ip_address,
        session.error,
    )


async def probe_all(
    providers: Sequence[Provider], *, timeout: float | None = None, settings: Settings | None = None
) -> list[ProbeResult]:
    """Probe every provider concurrently: the run takes as long as the slowest probe."""
    settings = settings or get_settings()
    return list(
        await asyncio.gather(
            *(_probe_safely(p, timeout=timeout, settings=settings) for p in providers)
        )
    )


async def _probe_safely(
    provider: Provider, *, timeout: float | None, settings: Settings
) -> ProbeResult:
    # probe_provider already turns failures into results; this guards against a bug in it so
    # that one provider can never stop the others.
    try:
        return await probe_provider(provider, timeout=timeout, settings=settings)
    except Exception as exc:
        logger.exception("probe of provider %s crashed", provider.name)
        return ProbeResult(
            provider.name,
            provider.host,
            provider.port,
            dt.datetime.now(dt.UTC),
            "smtp_error",
            0.0,
            None,
            f"probe crashed: {type(exc).__name__}",
        )


async def check_providers(
    db: Database,
    *,
    timeout: float | None = None,
    settings: Settings | None = None,
    dry_run: bool = False,
) -> HealthReport:
    """Probe every provider that is not disabled and record what was found.

    Writes one audit row per probe (one statement), the health scores and ``last_checked``
    (one statement), then counts each failure or success against the provider's circuit.
    ``dry_run`` probes and writes nothing.
    """
    settings = settings or get_settings()
    providers = await load_providers(db, include_disabled=False)
    probes = await probe_all(providers, timeout=timeout, settings=settings)
    checked_at = dt.datetime.now(dt.UTC)
    for probe in probes:
        if probe.ok:
            logger.info(
                "provider %s ok in %.0f ms (%s)",
                probe.provider_name,
                probe.latency_ms,
                probe.ip_address,
            )
        else:
            logger.warning(
                "provider %s probe %s: %s", probe.provider_name, probe.result, probe.error
            )
    if dry_run or not probes:
        return HealthReport(checked_at, probes, providers, [], recorded=not dry_run)

    await db.execute(
        query("insert_connection_audit"),
        {
            "names": [p.provider_name for p in probes],
            "hosts": [p.host for p in probes],
            "attempted_at": [p.attempted_at for p in probes],
            "ips": [p.ip_address for p in probes],
            "results": [p.result for p in probes],
            "latencies": [p.latency_ms for p in probes],
            "errors": [p.error for p in probes],
        },
    )
    scores = await _scores(db, [p.provider_name for p in probes], settings)
    await db.execute(
        query("update_provider_health"),
        {
            "names": list(scores),
            "scores": list(scores.values()),
            "checked_at": [p.attempted_at for p in probes if p.provider_name in scores],
        },
    )
    for probe in probes:
        if probe.ok:
            await record_provider_success(db, probe.provider_name)
        else:
            await record_provider_failure(db, probe.provider_name, settings)

    before = {p.name: p.status for p in providers}
    after = [p for p in await load_providers(db) if p.name in before]
    changes = [
        StatusChange(p.name, before[p.name], p.status, p.suspended_until)
        for p in after
        if p.status != before[p.name]
    ]
    for change in changes:
        logger.warning(
            "provider %s %s (was %s%s)",
            change.provider_name,
            change.kind,
            change.before,
            f", until {change.suspended_until:%Y-%m-%d %H:%M:%S}Z"
            if change.suspended_until and change.after == "suspended"
            else "",
        )
    return HealthReport(checked_at, probes, after, changes)


async def _scores(db: Database, names: list[str], settings: Settings) -> dict[str, float]:
    """Each named provider's health score from its probe history and recent deliveries."""
    from mailpipe.metrics import parse_window

    history: dict[str, list[tuple[bool, float | None]]] = {name: [] for name in names}
    for row in await db.fetch_all(
        query("recent_probe_results"), {"names": names, "limit": settings.health_probe_history}
    ):
        history[row["provider_name"]].append((row["result"] == "ok", row["latency_ms"]))
    outcomes = {
        r["provider_name"]: r
        for r in await db.fetch_all(
            query("provider_delivery_outcomes"),
            {"names": names, "window": parse_window(settings.health_delivery_window)},
        )
    }
    scores: dict[str, float] = {}
    for name in names:
        probes = history[name]
        if not probes:  # cannot happen right after inserting this run's rows; be safe
            continue
        latencies = [lat for ok, lat in probes if ok and lat is not None]
        delivery = outcomes.get(name, {})
        scores[name] = health_score(
            [ok for ok, _ in probes],
            statistics.median(latencies) if latencies else None,
            int(delivery.get("sent") or 0),
            int(delivery.get("failures") or 0),
            good_ms=settings.health_latency_good_ms,
            bad_ms=settings.health_latency_bad_ms,
        )
    return scores
