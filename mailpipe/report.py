"""The data team's HTML report: daily health snapshots as plots and tables in one file.

The file is self-contained (inline CSS, the SVG plots of :mod:`mailpipe.charts`, no script, no
font, no URL), so it opens in any browser with no network. The figures are computed here; the
page is the Jinja2 template ``mailpipe/pages/report.html.j2`` (autoescaped). pandas and Jinja2
are imported inside the functions only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mailpipe.charts import (
    ALL_COLOR,
    CRITICAL_COLOR,
    PALETTE,
    WARNING_COLOR,
    Series,
    line_chart,
)
from mailpipe.config import get_settings, resolve_timezone
from mailpipe.db import Database
from mailpipe.errors import MailpipeError
from mailpipe.snapshots import ALL_PROVIDERS, aload, today

if TYPE_CHECKING:
    import jinja2
    import pandas as pd

__all__ = [
    "Report",
    "bounce_thresholds",
    "complaint_thresholds",
    "render_report",
    "write_report",
]


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote."""

    path: Path
    start: date
    end: date
    days_with_data: int
    providers: list[str]


def bounce_thresholds() -> tuple[float | None, float | None]:
    """(warning, critical) hard-bounce rates: the monitoring alert settings (5 % / 10 % by
    default; None turns a line off)."""
    settings = get_settings()
    return settings.alert_bounce_rate_warning, settings.alert_bounce_rate_critical


def complaint_thresholds() -> tuple[float | None, float | None]:
    """(warning, critical) complaint rates: the monitoring alert settings (SES's 0.1 % review
    and 0.5 % suspension by default; None turns a line off)."""
    settings = get_settings()
    return settings.alert_complaint_rate_warning, settings.alert_complaint_rate_critical


def _threshold_lines(warning: float | None, critical: float | None) -> list[tuple[float, str, str]]:
    """The (value in %, label, colour) lines of a rate chart."""
    lines = []
    if warning is not None:
        lines.append((warning * 100, f"warning {warning * 100:g} %", WARNING_COLOR))
    if critical is not None:
        lines.append((critical * 100, f"critical {critical * 100:g} %", CRITICAL_COLOR))
    return lines


# ---------------------------------------------------------------- the report
def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or _isnan(value) else f"{value * 100:.{digits}f} %"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or _isnan(value) else f"{value:,.{digits}f}"


def _isnan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _clean(values: Sequence[float], scale: float = 1.0) -> list[float | None]:
    return [None if v is None or _isnan(v) else float(v) * scale for v in values]


@functools.cache
def _page() -> jinja2.Template:
    """The page template (``mailpipe/pages/report.html.j2``), with autoescape on."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mailpipe", "pages"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    return env.get_template("report.html.j2")


def render_report(
    frame: pd.DataFrame,
    *,
    start: date,
    end: date,
    timezone_name: str,
    generated_at: datetime,
    warning: float | None = 0.05,
    critical: float | None = 0.10,
    complaint_warning: float | None = 0.001,
    complaint_critical: float | None = 0.005,
) -> str:
    """The report's HTML for snapshot rows (a :func:`mailpipe.snapshots.load` frame).

    The figures and the SVG charts are computed here; the page around them is the template
    ``mailpipe/pages/report.html.j2``.
    """
    import pandas as pd

    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    index = pd.DatetimeIndex(pd.to_datetime(days))
    providers = sorted(p for p in frame["provider_name"].unique() if p != ALL_PROVIDERS)
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(providers)}

    def column(name: str, provider: str = ALL_PROVIDERS) -> list:
        rows = frame[frame["provider_name"] == provider].set_index("snapshot_date")[name]
        return rows.reindex(index).astype("float64").tolist()

    def ratio(numerator: str, provider: str = ALL_PROVIDERS) -> list[float | None]:
        """numerator / sent per day (feedback rates); None where nothing was sent."""
        pairs = zip(column(numerator, provider), column("sent", provider), strict=True)
        return [n / s if not (_isnan(n) or _isnan(s)) and s > 0 else None for n, s in pairs]

    def feedback_rate(numerator: str) -> list[Series]:
        lines = [Series(p, _clean(ratio(numerator, p), 100), colors[p], 1.6) for p in providers]
        return [*lines, Series("all providers", _clean(ratio(numerator), 100), ALL_COLOR, 2.6)]

    def per_provider(name: str, scale: float, include_all: bool = True) -> list[Series]:
        lines = [Series(p, _clean(column(name, p), scale), colors[p], 1.6) for p in providers]
        if include_all:
            lines.append(Series("all providers", _clean(column(name), scale), ALL_COLOR, 2.6))
        return lines

    totals = frame[frame["provider_name"] == ALL_PROVIDERS].sort_values("snapshot_date")
    present = {d.date() for d in totals["snapshot_date"]}

    sent = int(totals["sent"].sum())
    failed = int(totals["failed"].sum())
    bounces = int(totals["hard_bounces"].sum())
    success = sent / (sent + failed) if sent + failed else None
    bounce = bounces / (sent + bounces) if sent + bounces else None
    probes = int(totals["connection_attempts"].sum())
    availability = (probes - int(totals["connection_failures"].sum())) / probes if probes else None
    over_warning = int((totals["hard_bounce_rate"] >= warning).sum()) if warning else 0
    over_critical = int((totals["hard_bounce_rate"] >= critical).sum()) if critical else 0
    # What providers reported after accepting (feedback): rates over the messages sent.
    bounced, complained = int(totals["bounced"].sum()), int(totals["complained"].sum())
    bounced_rate = bounced / sent if sent else None
    complaint_rate = complained / sent if sent else None

    def complaint_level(rate: float | None) -> str:
        if rate is None or _isnan(rate):
            return ""
        if complaint_critical is not None and rate >= complaint_critical:
            return "crit"
        if complaint_warning is not None and rate >= complaint_warning:
            return "warn"
        return ""

    def level(rate: float | None) -> str:
        """The CSS class of a bounce rate: ``crit``, ``warn`` or none."""
        if rate is None or _isnan(rate):
            return ""
        if critical is not None and rate >= critical:
            return "crit"
        if warning is not None and rate >= warning:
            return "warn"
        return ""

    last_day = totals["snapshot_date"].max() if len(totals) else None
    latest = frame[frame["snapshot_date"] == last_day] if last_day is not None else frame.iloc[0:0]
    return _page().render(
        title=f"Email health, {start:%Y-%m-%d} to {end:%Y-%m-%d}",
        days=days,
        timezone_name=timezone_name,
        providers=providers,
        generated_at=generated_at,
        cards=[
            ("Sent", _num(sent), ""),
            ("Failed", _num(failed), ""),
            ("Delivery success", _pct(success), ""),
            ("Hard-bounce rate", _pct(bounce), level(bounce)),
            ("Days ≥ warning", str(over_warning), "warn" if over_warning else ""),
            ("Days ≥ critical", str(over_critical), "crit" if over_critical else ""),
            ("Availability", _pct(availability), ""),
            ("Delivered (reported)", _num(int(totals["delivered"].sum())), ""),
            ("Bounced after 250", _pct(bounced_rate), level(bounced_rate)),
            ("Complaint rate", _pct(complaint_rate, 3), complaint_level(complaint_rate)),
        ],
        missing=[d for d in days if d not in present],
        charts=[
            *_charts(days, column, per_provider, warning, critical),
            line_chart(
                "Bounced after acceptance (provider reports / sent) against the SES thresholds",
                days,
                feedback_rate("bounced"),
                unit=" %",
                y_min=0,
                thresholds=_threshold_lines(warning, critical),
            ),
            line_chart(
                "Complaint rate (complaints / sent) against the SES thresholds",
                days,
                feedback_rate("complained"),
                unit=" %",
                y_min=0,
                thresholds=_threshold_lines(complaint_warning, complaint_critical),
            ),
        ],
        totals=totals.to_dict("records"),
        last_day=last_day,
        latest=latest.to_dict("records"),
        all_providers=ALL_PROVIDERS,
        level=level,
    )


def _charts(
    days: Sequence[date],
    column: Callable[..., list],
    per_provider: Callable[..., list[Series]],
    warning: float | None,
    critical: float | None,
) -> list[str]:
    """The report's first five SVG charts, in page order (the feedback rates follow)."""
    thresholds = _threshold_lines(warning, critical)

    latency = _clean(column("queue_latency_p95_seconds")) + _clean(
        column("queue_latency_p50_seconds")
    )
    latency_max = max((v for v in latency if v is not None), default=0.0)
    minutes = latency_max > 600
    lat_scale, lat_unit = (1 / 60, " min") if minutes else (1.0, " s")

    success_values = [
        v for s in per_provider("delivery_success_rate", 100) for v in s.values if v is not None
    ]
    avail_values = [
        v for s in per_provider("availability", 100, False) for v in s.values if v is not None
    ]
    return [
        line_chart(
            "Daily volume (all providers)",
            days,
            [
                Series("events created", _clean(column("events_created")), PALETTE[0]),
                Series("sent", _clean(column("sent")), PALETTE[2]),
                Series("failed", _clean(column("failed")), PALETTE[5]),
                Series("retried", _clean(column("retried")), PALETTE[1], 1.5, True),
                Series("deferred (rate limits)", _clean(column("deferred")), PALETTE[3], 1.5, True),
            ],
        ),
        line_chart(
            "Delivery success rate: sent / (sent + failed)",
            days,
            per_provider("delivery_success_rate", 100),
            unit=" %",
            y_min=min([*success_values, 90.0]),
            y_max=100,
        ),
        line_chart(
            "Hard-bounce rate against the alert thresholds",
            days,
            per_provider("hard_bounce_rate", 100),
            unit=" %",
            y_min=0,
            thresholds=thresholds,
        ),
        line_chart(
            "Queue latency, created → sent (all providers)",
            days,
            [
                Series(
                    "median", _clean(column("queue_latency_p50_seconds"), lat_scale), PALETTE[0]
                ),
                Series("p95", _clean(column("queue_latency_p95_seconds"), lat_scale), PALETTE[5]),
            ],
            unit=lat_unit,
        ),
        line_chart(
            "Provider availability: ok probes / probes",
            days,
            per_provider("availability", 100, include_all=False),
            unit=" %",
            y_min=min([*avail_values, 90.0]),
            y_max=100,
        ),
    ]


async def write_report(
    out: Path, days: int = 30, *, end: date | None = None, database: Database | None = None
) -> Report:
    """Write the report of the ``days`` days ending ``end`` (default: yesterday) to ``out``."""
    if days < 1:
        raise MailpipeError(f"--days must be at least 1 (got {days})")
    if database is None:
        async with Database(min_size=1, max_size=1) as db:
            return await write_report(out, days, end=end, database=db)
    tz = resolve_timezone()
    end = end or await today(database, tz) - timedelta(days=1)
    start = end - timedelta(days=days - 1)
    frame = await aload(database, start, end)
    if frame.empty:
        raise MailpipeError(
            f"no snapshots between {start} and {end}: compute them first with "
            f"`mailpipe snapshot --from {start} --to {end}`"
        )
    warning, critical = bounce_thresholds()
    complaint_warning, complaint_critical = complaint_thresholds()
    page = render_report(
        frame,
        start=start,
        end=end,
        timezone_name=tz,
        generated_at=datetime.now(UTC),
        warning=warning,
        critical=critical,
        complaint_warning=complaint_warning,
        complaint_critical=complaint_critical,
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise MailpipeError(f"cannot write {out}: {exc.strerror}; pick another --out") from exc
    providers = sorted(p for p in frame["provider_name"].unique() if p != ALL_PROVIDERS)
    return Report(out, start, end, int(frame["snapshot_date"].nunique()), providers)
