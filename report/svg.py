"""Inline SVG charts (no library, no script): horizontal bars, a histogram with a threshold line, line charts.

Labels are escaped like every other string in the page.
"""

from __future__ import annotations

import math
from typing import Sequence

from report.page import esc

_COLORS = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00")


def bars(labels: Sequence[str], values: Sequence[float], title: str, width: int = 640) -> str:
    """Horizontal bars, one per label, longest first as given."""
    row, left = 18, 290
    height = 24 + row * len(labels)
    top = max(values, default=0) or 1
    out = [_open(width, height, title), f'<text x="4" y="14" font-size="12" font-weight="bold">{esc(title)}</text>']
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 22 + i * row
        w = (width - left - 80) * value / top
        out.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{esc(label[:48])}</text>')
        out.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="{_COLORS[0]}"/>')
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + 12}" font-size="11">{value:,.0f}</text>')
    return "".join(out) + "</svg>"


def histogram(values: Sequence[float], title: str, threshold: float | None = None, bins: int = 30,
              width: int = 340, height: int = 180) -> str:
    """A histogram of `values`, with the threshold drawn as a red vertical line when given."""
    lo, hi = min(values), max(values)
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi == lo:
        hi = lo + 1
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    x0, y0, plot_w, plot_h = 30, 22, width - 40, height - 50
    top = max(counts) or 1
    out = [_open(width, height, title), f'<text x="4" y="14" font-size="11" font-weight="bold">{esc(title[:60])}</text>']
    bw = plot_w / bins
    for i, c in enumerate(counts):
        h = plot_h * c / top
        out.append(f'<rect x="{x0 + i * bw:.1f}" y="{y0 + plot_h - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                   f'fill="{_COLORS[0]}"/>')
    out.append(_axis_labels(x0, y0 + plot_h, plot_w, lo, hi, top))
    if threshold is not None and math.isfinite(threshold):
        x = x0 + plot_w * (threshold - lo) / (hi - lo)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + plot_h}" stroke="red" stroke-width="2"/>')
        right = x > x0 + plot_w / 2  # the label on the side with room
        out.append(f'<text x="{x - 3 if right else x + 3:.1f}" y="{y0 + 10}" font-size="10" fill="red" '
                   f'text-anchor="{"end" if right else "start"}">threshold {threshold:g}</text>')
    return "".join(out) + "</svg>"


def lines(series: dict[str, Sequence[tuple[float, float]]], title: str, xlabel: str = "step",
          width: int = 520, height: int = 240) -> str:
    """One polyline per named series of (x, y) points, with a legend."""
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xlo, xhi, ylo, yhi = min(xs), max(xs), min(ys), max(ys)
    xhi, yhi = (xhi if xhi > xlo else xlo + 1), (yhi if yhi > ylo else ylo + 1)
    x0, y0, pw, ph = 44, 22, width - 150, height - 50
    out = [_open(width, height, title), f'<text x="4" y="14" font-size="12" font-weight="bold">{esc(title)}</text>']
    for k, (name, pts) in enumerate(series.items()):
        color = _COLORS[k % len(_COLORS)]
        coords = " ".join(f"{x0 + pw * (x - xlo) / (xhi - xlo):.1f},{y0 + ph * (1 - (y - ylo) / (yhi - ylo)):.1f}"
                          for x, y in pts if math.isfinite(y))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        if len(pts) == 1:
            x, y = pts[0]
            out.append(f'<circle cx="{x0 + pw * (x - xlo) / (xhi - xlo):.1f}" '
                       f'cy="{y0 + ph * (1 - (y - ylo) / (yhi - ylo)):.1f}" r="3" fill="{color}"/>')
        out.append(f'<text x="{x0 + pw + 10}" y="{y0 + 12 + 14 * k}" font-size="11" fill="{color}">{esc(name)}</text>')
    out.append(f'<text x="4" y="{y0 + 8}" font-size="10">{yhi:.3g}</text>')
    out.append(f'<text x="4" y="{y0 + ph}" font-size="10">{ylo:.3g}</text>')
    out.append(f'<text x="{x0}" y="{y0 + ph + 14}" font-size="10">{xlo:g}</text>')
    out.append(f'<text x="{x0 + pw}" y="{y0 + ph + 14}" font-size="10" text-anchor="end">{xhi:g} {esc(xlabel)}</text>')
    return "".join(out) + "</svg>"


def _open(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{esc(title)}">')


def _axis_labels(x0: float, y: float, w: float, lo: float, hi: float, top: int) -> str:
    return (f'<text x="{x0}" y="{y + 14}" font-size="10">{lo:.3g}</text>'
            f'<text x="{x0 + w}" y="{y + 14}" font-size="10" text-anchor="end">{hi:.3g}</text>'
            f'<text x="2" y="{y}" font-size="10">0</text><text x="2" y="30" font-size="10">{top}</text>')
