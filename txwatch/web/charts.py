"""Server-side SVG charts (no JavaScript, no styles: presentation attributes only, CSP-safe).

>>> svg = hourly_bars([])
>>> svg.startswith("<svg") and "no alerts" in svg
True
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

COLOURS = {"review": "#e0a100", "block": "#c62828"}
SEVERITIES = ("review", "block")


def _nice_max(v: int) -> int:
    """The smallest of 1, 2, 5 x 10^k at or above ``v`` (at least 1), for the y-axis."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= v:
                return m * step
        step *= 10


def hourly_bars(hours: Sequence[dict[str, Any]], width: int = 1200, height: int = 260) -> Markup:
    """Stacked bars of alerts per hour by severity; ``hours``: ``{"hour", "review", "block"}``."""
    left, right, top, bottom = 44, 10, 12, 34
    pw, ph = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Alerts per hour by severity" class="chart">'
    ]
    if not hours:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#666">'
            "no alerts in this window</text></svg>"
        )
        return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text
    ymax = _nice_max(max(h["review"] + h["block"] for h in hours))
    n = len(hours)
    slot = pw / n
    bar = max(1.0, slot * 0.8)
    for frac in (0, 0.5, 1):
        y = top + ph - ph * frac
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#555">{round(ymax * frac)}</text>'
        )
    label_every = max(1, n // 8)
    for i, h in enumerate(hours):
        x = left + i * slot + (slot - bar) / 2
        y = top + ph
        hour: datetime = h["hour"]
        for sev in SEVERITIES:
            v = h[sev]
            if not v:
                continue
            bh = ph * v / ymax
            y -= bh
            tip = escape(f"{hour:%Y-%m-%d %H:00} UTC: {v} {sev}")
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{bh:.1f}" '
                f'fill="{COLOURS[sev]}"><title>{tip}</title></rect>'
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + ph + 16}" text-anchor="middle" '
                f'font-size="11" fill="#555">{hour:%H:00}</text>'
            )
    first, last = hours[0]["hour"], hours[-1]["hour"]
    parts.append(
        f'<text x="{left}" y="{height - 2}" font-size="11" fill="#777">'
        f"{escape(f'{first:%Y-%m-%d %H:00} to {last:%Y-%m-%d %H:59} UTC')}</text>"
    )
    lx = left + pw - 150
    for j, sev in enumerate(SEVERITIES):
        parts.append(
            f'<rect x="{lx + j * 75}" y="{height - 13}" width="10" height="10" '
            f'fill="{COLOURS[sev]}"/><text x="{lx + j * 75 + 14}" y="{height - 4}" '
            f'font-size="11" fill="#333">{sev}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text


def fill_hours(
    rows: Sequence[dict[str, Any]], start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """One bucket per hour from ``start`` to ``end`` (exclusive), zero where no alert."""
    buckets: dict[datetime, dict[str, Any]] = {}
    t = start
    while t < end:
        buckets[t] = {"hour": t, "review": 0, "block": 0}
        t += timedelta(hours=1)
    for r in rows:
        b = buckets.get(r["hour"])
        if b is not None and r["severity"] in SEVERITIES:
            b[r["severity"]] += int(r["n"])
    return list(buckets.values())
