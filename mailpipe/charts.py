"""Inline SVG line charts of daily values: no script, no font, no URL, so a page holding them
renders offline in any browser. Text is escaped here; the SVG goes into a page as is."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

__all__ = ["ALL_COLOR", "CRITICAL_COLOR", "PALETTE", "WARNING_COLOR", "Series", "line_chart"]

# Distinct on white and for the common colour-vision deficiencies (Okabe-Ito, then Tableau).
PALETTE = [
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
ALL_COLOR = "#222222"
WARNING_COLOR = "#E69F00"
CRITICAL_COLOR = "#C0392B"


@dataclass(frozen=True)
class Series:
    """One line of a chart: a value per day (None where the day has no value)."""

    label: str
    values: Sequence[float | None]
    color: str
    width: float = 2.0
    dashed: bool = False


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
