"""Server-rendered SVG charts: nothing to vendor, nothing from a CDN, and readable with
scripts off. Colours are attributes, not styles, so a strict Content-Security-Policy holds."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
WIDTH, HEIGHT, PAD = 640, 180, 36


def line_chart(
    title: str, times: Sequence[float], lines: Mapping[str, Sequence[float | None]], unit: str = "",
    thresholds: dict[str, float] | None = None,
) -> str:
    """One chart: ``lines`` over ``times`` (seconds), with dashed ``thresholds``."""
    values = [v for series in lines.values() for v in series if v is not None and math.isfinite(v)]
    limits = list((thresholds or {}).values())
    if not times or not values:
        return f'<figure class="chart"><figcaption>{escape(title)}</figcaption><p class="muted">no data yet</p></figure>'
    top = max([*values, *limits]) * 1.1 or 1.0
    start, end = min(times), max(times)
    span = max(end - start, 1e-9)

    def x(t: float) -> float:
        return PAD + (t - start) / span * (WIDTH - 2 * PAD)

    def y(v: float) -> float:
        return HEIGHT - PAD + 8 - v / top * (HEIGHT - PAD - 8 - 12)

    parts = [f'<line x1="{PAD}" y1="{y(0):.1f}" x2="{WIDTH - PAD}" y2="{y(0):.1f}" stroke="#999"/>']
    for fraction in (0.5, 1.0):
        value = top / 1.1 * fraction
        parts.append(
            f'<text x="4" y="{y(value) + 4:.1f}" font-size="10" fill="#555">{_number(value)}{unit}</text>'
        )
    for name, limit in (thresholds or {}).items():
        parts.append(f'<line x1="{PAD}" y1="{y(limit):.1f}" x2="{WIDTH - PAD}" y2="{y(limit):.1f}" stroke="#f59e0b" '
                     f'stroke-dasharray="4 3"><title>{escape(name)} {limit}</title></line>')
    legend = []
    for index, (name, series) in enumerate(lines.items()):
        colour = PALETTE[index % len(PALETTE)]
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, series, strict=False)
                          if v is not None and math.isfinite(v))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{points}"/>')
        legend.append(f'<tspan fill="{colour}">■ {escape(name)}</tspan>')
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 6}" font-size="10" fill="#555">{_clock(start)}</text>')
    parts.append(f'<text x="{WIDTH - PAD}" y="{HEIGHT - 6}" font-size="10" fill="#555" text-anchor="end">'
                 f"{_clock(end)}</text>")
    parts.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" font-size="11" text-anchor="middle">{" ".join(legend)}</text>'
    )
    svg = (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
           f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')
    return f'<figure class="chart"><figcaption>{escape(title)}</figcaption>{svg}</figure>'


def bars(title: str, groups: Mapping[str, Sequence[float]], labels: Sequence[str]) -> str:
    """Side-by-side bars per label, one colour per group (a distribution against its reference)."""
    if not labels or not groups:
        return f'<figure class="chart"><figcaption>{escape(title)}</figcaption><p class="muted">no data yet</p></figure>'
    top = max((v for values in groups.values() for v in values), default=1.0) or 1.0
    slot = (WIDTH - 2 * PAD) / len(labels)
    width = slot * 0.8 / len(groups)
    parts = []
    for g, (name, values) in enumerate(groups.items()):
        colour = PALETTE[g % len(PALETTE)]
        for i, value in enumerate(values):
            height = value / top * (HEIGHT - PAD - 20)
            left = PAD + i * slot + slot * 0.1 + g * width
            parts.append(f'<rect x="{left:.1f}" y="{HEIGHT - PAD - height:.1f}" width="{width:.1f}" '
                         f'height="{height:.1f}" fill="{colour}"><title>{escape(name)} {labels[i]}: '
                         f"{value:.3f}</title></rect>")
        parts.append(
            f'<text x="{PAD + g * 160}" y="12" font-size="11" fill="{colour}">■ {escape(name)}</text>'
        )
    for i, label in enumerate(labels):
        parts.append(f'<text x="{PAD + (i + 0.5) * slot:.1f}" y="{HEIGHT - PAD + 14}" font-size="10" '
                     f'text-anchor="middle">{escape(str(label))}</text>')
    svg = (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
           f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')
    return f'<figure class="chart"><figcaption>{escape(title)}</figcaption>{svg}</figure>'


def comparison(title: str, values: dict[str, float], allowed: float | None) -> str:
    """Horizontal bars, one per group, on one scale, with a dashed line at ``allowed``
    (the control group's value plus the rule's limit)."""
    width, row = 300, 24
    top = max([*values.values(), allowed or 0.0]) * 1.15 or 1.0
    scale = (width - 90) / top
    parts = []
    for index, (name, value) in enumerate(values.items()):
        y = 8 + index * row
        parts.append(f'<text x="0" y="{y + 13}" font-size="11">{escape(name)}</text>')
        parts.append(f'<rect x="60" y="{y}" width="{max(value * scale, 1):.1f}" height="16" '
                     f'fill="{PALETTE[index % len(PALETTE)]}"/>')
        parts.append(
            f'<text x="{64 + value * scale:.1f}" y="{y + 13}" font-size="11">{_number(value)}</text>'
        )
    height = 12 + len(values) * row
    if allowed is not None:
        x = 60 + allowed * scale
        parts.append(f'<line x1="{x:.1f}" y1="2" x2="{x:.1f}" y2="{height - 2}" stroke="#f59e0b" '
                     f'stroke-dasharray="4 3"><title>allowed {_number(allowed)}</title></line>')
    svg = (f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
           f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')
    return f'<figure class="chart small"><figcaption>{escape(title)}</figcaption>{svg}</figure>'


def sparkline(values: Sequence[float | None], limit: float) -> str:
    """A small trend line, red where it crosses ``limit``."""
    found = [v for v in values if v is not None]
    if len(found) < 2:
        return ""
    top = max(max(found), limit) * 1.1
    step = 120 / (len(found) - 1)
    points = " ".join(f"{i * step:.1f},{24 - v / top * 22:.1f}" for i, v in enumerate(found))
    colour = "#dc2626" if found[-1] >= limit else "#2563eb"
    return (f'<svg class="spark" viewBox="0 0 120 26" xmlns="http://www.w3.org/2000/svg"><polyline fill="none" '
            f'stroke="{colour}" stroke-width="1.5" points="{points}"/></svg>')


def _number(value: float) -> str:
    return f"{value:.3g}"


def _clock(seconds: float) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(seconds))
