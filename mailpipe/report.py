"""The data team's HTML report: daily health snapshots as plots and tables in one file.

The file is self-contained (inline CSS and SVG plots drawn here, no script, no font, no URL),
so it opens in any browser with no network. pandas is imported inside the functions only.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mailpipe.config import get_settings
from mailpipe.db import Database
from mailpipe.errors import MailpipeError
from mailpipe.snapshots import ALL_PROVIDERS, aload, resolve_timezone, today

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Report", "Series", "bounce_thresholds", "line_chart", "render_report", "write_report"]

# Distinct on white and for the common colour-vision deficiencies (Okabe-Ito, then Tableau).
_PALETTE = [
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#4E79A7",
    "#F28E2B",
    "#59A14F",
    "#B07AA1",
    "#9C755F",
]
_ALL_COLOR = "#222222"
_WARNING_COLOR = "#E69F00"
_CRITICAL_COLOR = "#C0392B"


@dataclass(frozen=True)
class Series:
    """One line of a chart: a value per day (None where the day has no value)."""

    label: str
    values: Sequence[float | None]
    color: str
    width: float = 2.0
    dashed: bool = False


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote."""

    path: Path
    start: date
    end: date
    days_with_data: int
    providers: list[str]


def bounce_thresholds() -> tuple[float | None, float | None]:
    """(warning, critical) hard-bounce rates: the monitoring alert settings, else 5 % / 10 %."""
    settings = get_settings()
    return (
        getattr(settings, "alert_bounce_rate_warning", 0.05),
        getattr(settings, "alert_bounce_rate_critical", 0.10),
    )


# ---------------------------------------------------------------- SVG
def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _fmt_tick(value: float, unit: str) -> str:
    text = f"{value:,.2f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    return f"{text}{unit}"


def line_chart(
    title: str,
    days: Sequence[date],
    series: Sequence[Series],
    *,
    unit: str = "",
    y_min: float | None = 0.0,
    y_max: float | None = None,
    thresholds: Sequence[tuple[float, str, str]] = (),
    width: int = 960,
    height: int = 250,
) -> str:
    """An inline ``<svg>`` line chart of daily values; gaps where a value is None.

    ``thresholds`` are (value, label, colour) horizontal lines; the band above each is tinted.
    """
    left, right, top, bottom = 64, 16, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for v in s.values if v is not None]
    limits = [t[0] for t in thresholds]
    low = min([*values, *limits]) if values or limits else 0.0
    high = max([*values, *limits]) if values or limits else 1.0
    low = y_min if y_min is not None else low
    high = y_max if y_max is not None else high
    if high <= low:
        high = low + 1.0
    step = _nice_step(high - low)
    low = math.floor(low / step) * step
    high = math.ceil(high / step) * step
    if thresholds:  # room above the highest threshold so its label stays inside
        high = max(high, max(limits) + step)

    n = len(days)

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else 0)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
    ]
    # Threshold bands and lines under the data.
    for k, (value, label, color) in enumerate(sorted(thresholds)):
        upper = sorted(thresholds)[k + 1][0] if k + 1 < len(thresholds) else high
        out.append(
            f'<rect x="{left}" y="{y(upper):.1f}" width="{plot_w}" '
            f'height="{y(value) - y(upper):.1f}" fill="{color}" fill-opacity="0.10"/>'
        )
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}" stroke="{color}" stroke-width="1.5" '
            f'stroke-dasharray="6 4"/>'
        )
        out.append(
            f'<text x="{left + plot_w - 4}" y="{y(value) - 4:.1f}" text-anchor="end" '
            f'class="threshold" fill="{color}">{html.escape(label)}</text>'
        )
    # Grid and y axis.
    tick = low
    while tick <= high + step / 1000:
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" '
            f'y2="{y(tick):.1f}" class="grid"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" '
            f'class="tick">{html.escape(_fmt_tick(tick, unit))}</text>'
        )
        tick += step
    # x labels: at most ~8, always the last day.
    every = max(1, math.ceil(n / 8))
    for i, day in enumerate(days):
        # The last day always; the regular label before it only when they cannot overlap.
        if (i % every == 0 and (i == n - 1 or n - 1 - i >= every / 2)) or i == n - 1:
            out.append(
                f'<text x="{x(i):.1f}" y="{height - 12}" text-anchor="middle" '
                f'class="tick">{day:%b %d}</text>'
            )
    out.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" '
        f'y2="{top + plot_h}" class="axis"/>'
    )
    # Data: a polyline per run of consecutive days with a value, a dot (tooltip) per value.
    for s in series:
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        run: list[str] = []
        runs: list[list[str]] = []
        for i, value in enumerate(s.values):
            if value is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(f"{x(i):.1f},{y(value):.1f}")
        if run:
            runs.append(run)
        for points in runs:
            if len(points) > 1:
                out.append(
                    f'<polyline points="{" ".join(points)}" fill="none" '
                    f'stroke="{s.color}" stroke-width="{s.width}"{dash}/>'
                )
        for i, value in enumerate(s.values):
            if value is not None:
                out.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="2.6" '
                    f'fill="{s.color}"><title>{html.escape(s.label)} {days[i]}: '
                    f"{html.escape(_fmt_tick(round(value, 3), unit))}</title></circle>"
                )
    out.append("</svg>")
    legend = "".join(
        f'<span class="key"><span class="swatch" style="background:{s.color}"></span>'
        f"{html.escape(s.label)}</span>"
        for s in series
    )
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(out)}"
        f'<div class="legend">{legend}</div></figure>'
    )


# ---------------------------------------------------------------- the report
_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       margin: 24px auto; max-width: 1000px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.meta { color: #666; margin-top: 0; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 16px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; min-width: 130px; }
.card b { display: block; font-size: 20px; }
.card.warn b { color: #B9770E; } .card.crit b { color: #C0392B; }
figure { margin: 18px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg.chart { max-width: 100%; height: auto; display: block; }
svg .grid { stroke: #e6e6e6; stroke-width: 1; } svg .axis { stroke: #999; }
svg .tick { font-size: 11px; fill: #555; } svg .threshold { font-size: 11px; font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; color: #444; }
.swatch { display: inline-block; width: 12px; height: 3px; margin-right: 5px;
          vertical-align: middle; }
table { border-collapse: collapse; font-size: 12px; width: 100%; }
.scroll { overflow-x: auto; }
th, td { padding: 3px 6px; border-bottom: 1px solid #eee; text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { background: #f6f6f6; }
td.warn { background: #FDF2E0; } td.crit { background: #FBE3E0; }
.note { color: #666; font-size: 12.5px; }
"""


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or _isnan(value) else f"{value * 100:.{digits}f} %"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or _isnan(value) else f"{value:,.{digits}f}"


def _isnan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _clean(values: Sequence[float], scale: float = 1.0) -> list[float | None]:
    return [None if v is None or _isnan(v) else float(v) * scale for v in values]


def render_report(
    frame: pd.DataFrame,
    *,
    start: date,
    end: date,
    timezone_name: str,
    generated_at: datetime,
    warning: float | None = 0.05,
    critical: float | None = 0.10,
) -> str:
    """The report's HTML for snapshot rows (a :func:`mailpipe.snapshots.load` frame)."""
    import pandas as pd

    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    index = pd.DatetimeIndex(pd.to_datetime(days))
    providers = sorted(p for p in frame["provider_name"].unique() if p != ALL_PROVIDERS)
    colors = {p: _PALETTE[i % len(_PALETTE)] for i, p in enumerate(providers)}

    def column(name: str, provider: str = ALL_PROVIDERS) -> list:
        rows = frame[frame["provider_name"] == provider].set_index("snapshot_date")[name]
        return rows.reindex(index).astype("float64").tolist()

    def per_provider(name: str, scale: float, include_all: bool = True) -> list[Series]:
        lines = [Series(p, _clean(column(name, p), scale), colors[p], 1.6) for p in providers]
        if include_all:
            lines.append(Series("all providers", _clean(column(name), scale), _ALL_COLOR, 2.6))
        return lines

    totals = frame[frame["provider_name"] == ALL_PROVIDERS].sort_values("snapshot_date")
    present = {d.date() for d in totals["snapshot_date"]}
    missing = [d for d in days if d not in present]

    sent = int(totals["sent"].sum())
    failed = int(totals["failed"].sum())
    bounces = int(totals["hard_bounces"].sum())
    success = sent / (sent + failed) if sent + failed else None
    bounce = bounces / (sent + bounces) if sent + bounces else None
    probes = int(totals["connection_attempts"].sum())
    availability = (probes - int(totals["connection_failures"].sum())) / probes if probes else None
    over_warning = int((totals["hard_bounce_rate"] >= warning).sum()) if warning else 0
    over_critical = int((totals["hard_bounce_rate"] >= critical).sum()) if critical else 0

    def level(rate: float | None) -> str:
        if rate is None or _isnan(rate):
            return ""
        if critical is not None and rate >= critical:
            return "crit"
        if warning is not None and rate >= warning:
            return "warn"
        return ""

    thresholds = []
    if warning is not None:
        thresholds.append((warning * 100, f"warning {warning * 100:g} %", _WARNING_COLOR))
    if critical is not None:
        thresholds.append((critical * 100, f"critical {critical * 100:g} %", _CRITICAL_COLOR))

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

    charts = [
        line_chart(
            "Daily volume (all providers)",
            days,
            [
                Series("events created", _clean(column("events_created")), _PALETTE[0]),
                Series("sent", _clean(column("sent")), _PALETTE[2]),
                Series("failed", _clean(column("failed")), _PALETTE[5]),
                Series("retried", _clean(column("retried")), _PALETTE[1], 1.5, True),
                Series(
                    "deferred (rate limits)", _clean(column("deferred")), _PALETTE[3], 1.5, True
                ),
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
                    "median", _clean(column("queue_latency_p50_seconds"), lat_scale), _PALETTE[0]
                ),
                Series("p95", _clean(column("queue_latency_p95_seconds"), lat_scale), _PALETTE[5]),
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

    cards = [
        ("Sent", _num(sent), ""),
        ("Failed", _num(failed), ""),
        ("Delivery success", _pct(success), ""),
        ("Hard-bounce rate", _pct(bounce), level(bounce)),
        ("Days ≥ warning", str(over_warning), "warn" if over_warning else ""),
        ("Days ≥ critical", str(over_critical), "crit" if over_critical else ""),
        ("Availability", _pct(availability), ""),
    ]

    def table(rows: pd.DataFrame, first: str) -> str:
        head = (
            f"<tr><th>{first}</th><th>created</th><th>sent</th><th>failed</th>"
            "<th>retried</th><th>deferred</th><th>suppressed</th><th>bounces</th>"
            "<th>success</th><th>bounce rate</th><th>latency p50</th><th>p95</th>"
            "<th>probes</th><th>avail.</th><th>health</th></tr>"
        )
        body = []
        for row in rows.itertuples(index=False):
            label = (
                f"{row.snapshot_date:%Y-%m-%d}"
                if first == "day"
                else ("all providers" if row.provider_name == ALL_PROVIDERS else row.provider_name)
            )
            body.append(
                f"<tr><td>{html.escape(label)}</td><td>{_num(row.events_created)}</td>"
                f"<td>{_num(row.sent)}</td><td>{_num(row.failed)}</td>"
                f"<td>{_num(row.retried)}</td><td>{_num(row.deferred)}</td>"
                f"<td>{_num(row.suppressed)}</td><td>{_num(row.hard_bounces)}</td>"
                f"<td>{_pct(row.delivery_success_rate)}</td>"
                f'<td class="{level(row.hard_bounce_rate)}">{_pct(row.hard_bounce_rate)}</td>'
                f"<td>{_num(row.queue_latency_p50_seconds, 1)} s</td>"
                f"<td>{_num(row.queue_latency_p95_seconds, 1)} s</td>"
                f"<td>{_num(row.connection_attempts)}</td><td>{_pct(row.availability, 1)}</td>"
                f"<td>{_num(row.health_score, 0)}</td></tr>"
            )
        return f'<div class="scroll"><table>{head}{"".join(body)}</table></div>'

    last_day = totals["snapshot_date"].max() if len(totals) else None
    latest = frame[frame["snapshot_date"] == last_day] if last_day is not None else frame.iloc[0:0]
    title = f"Email health, {start:%Y-%m-%d} to {end:%Y-%m-%d}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{len(days)} days in {html.escape(timezone_name)}, '
        f"{len(providers)} provider(s); generated {generated_at:%Y-%m-%d %H:%M %Z} "
        "from email_health_snapshots.</p>",
        '<div class="cards">'
        + "".join(
            f'<div class="card {cls}">{html.escape(name)}<b>{value}</b></div>'
            for name, value, cls in cards
        )
        + "</div>",
    ]
    if missing:
        shown = ", ".join(f"{d:%Y-%m-%d}" for d in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        parts.append(
            f'<p class="note">No snapshot for {len(missing)} day(s): {shown}{more} '
            "(gaps in the plots). Compute them with <code>mailpipe snapshot --from "
            f"{missing[0]:%Y-%m-%d} --to {missing[-1]:%Y-%m-%d}</code>.</p>"
        )
    parts += charts
    parts.append("<h2>Daily totals (all providers)</h2>")
    parts.append(table(totals, "day"))
    if last_day is not None:
        parts.append(f"<h2>Providers on {last_day:%Y-%m-%d}</h2>")
        parts.append(table(latest, "provider"))
    parts.append(
        '<p class="note">Definitions: see the column comments of '
        "email_health_snapshots (<code>\\d+ email_health_snapshots</code> in psql). "
        "Rates are over the day's finished messages; a provider's rows count only "
        "the events attributed to it.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


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
    page = render_report(
        frame,
        start=start,
        end=end,
        timezone_name=tz,
        generated_at=datetime.now(UTC),
        warning=warning,
        critical=critical,
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise MailpipeError(f"cannot write {out}: {exc.strerror}; pick another --out") from exc
    providers = sorted(p for p in frame["provider_name"].unique() if p != ALL_PROVIDERS)
    return Report(out, start, end, int(frame["snapshot_date"].nunique()), providers)
