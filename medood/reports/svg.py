"""Small inline-SVG plots for the run report (no plotting library, no JavaScript).

Every function returns an ``<svg>`` element as a string, sized in CSS pixels; non-finite values are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

__all__ = ["histogram_svg", "line_svg"]

_PAD_L, _PAD_R, _PAD_T, _PAD_B = 46, 10, 10, 28
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _axes(width: int, height: int, x_range: tuple[float, float], y_range: tuple[float, float], x_label: str) -> str:
    x0, y0, x1, y1 = _PAD_L, height - _PAD_B, width - _PAD_R, _PAD_T
    parts = [
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#444"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444"/>',
        f'<text x="{x0}" y="{y0 + 14}" font-size="10">{_fmt(x_range[0])}</text>',
        f'<text x="{x1}" y="{y0 + 14}" font-size="10" text-anchor="end">{_fmt(x_range[1])}</text>',
        f'<text x="{(x0 + x1) / 2}" y="{y0 + 24}" font-size="10" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="{x0 - 4}" y="{y0}" font-size="10" text-anchor="end">{_fmt(y_range[0])}</text>',
        f'<text x="{x0 - 4}" y="{y1 + 8}" font-size="10" text-anchor="end">{_fmt(y_range[1])}</text>',
    ]
    return "".join(parts)


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a + (b - a) * ((v - lo) / (hi - lo) if hi > lo else 0.5)


def _vline(x: float, height: int, colour: str, label: str) -> str:
    return (
        f'<line x1="{x:.1f}" y1="{_PAD_T}" x2="{x:.1f}" y2="{height - _PAD_B}" stroke="{colour}" '
        f'stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="{height - _PAD_B - 4}" font-size="10" fill="{colour}">'
        f"{escape(label)}</text>"
    )


def line_svg(
    values: Sequence[float],
    threshold: float | None = None,
    width: int = 360,
    height: int = 140,
    x_label: str = "slice",
    title: str = "",
) -> str:
    """A line plot of ``values`` against their index, with an optional horizontal threshold line."""
    y = np.asarray(values, dtype=np.float64)
    finite = y[np.isfinite(y)]
    lo = float(min(finite.min(), threshold if threshold is not None else math.inf)) if finite.size else 0.0
    hi = float(max(finite.max(), threshold if threshold is not None else -math.inf)) if finite.size else 1.0
    n = max(len(y) - 1, 1)
    x0, x1, yb, yt = _PAD_L, width - _PAD_R, height - _PAD_B, _PAD_T
    points = " ".join(
        f"{_scale(i, 0, n, x0, x1):.1f},{_scale(v, lo, hi, yb, yt):.1f}" for i, v in enumerate(y) if math.isfinite(v)
    )
    body = [_axes(width, height, (0, n), (lo, hi), x_label)]
    if points:
        body.append(f'<polyline fill="none" stroke="{_COLOURS[0]}" stroke-width="1.5" points="{points}"/>')
    if threshold is not None:
        ty = _scale(threshold, lo, hi, yb, yt)
        body.append(f'<line x1="{x0}" y1="{ty:.1f}" x2="{x1}" y2="{ty:.1f}" stroke="#d62728" stroke-dasharray="4 3"/>')
    return _svg(width, height, title, "".join(body))


def histogram_svg(
    groups: dict[str, Sequence[float]],
    markers: dict[str, float] | None = None,
    bins: int = 30,
    width: int = 560,
    height: int = 200,
    x_label: str = "score (higher = more OOD)",
    title: str = "",
    counts: dict[str, int | None] | None = None,
) -> str:
    """Overlaid density histograms of several score groups, with labelled vertical markers (thresholds).

    Each group is normalised to its own area, so a reference of 1000 calibration quantiles and a run of 10 cases
    compare by shape. Groups are drawn as outlines in distinct colours, with a legend BELOW the plot (never over
    the bars); ``counts`` gives a group's number of images where its values are not one per image (quantiles).
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()}
    arrays = {k: a[np.isfinite(a)] for k, a in arrays.items() if np.isfinite(a).any()}
    extra = [v for v in (markers or {}).values() if math.isfinite(v)]
    pooled = np.concatenate([*arrays.values(), np.asarray(extra, dtype=np.float64)]) if arrays or extra else None
    lo, hi = (float(pooled.min()), float(pooled.max())) if pooled is not None and pooled.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    dens = {k: np.histogram(a, bins=edges, density=True)[0] for k, a in arrays.items()}
    top = max((float(d.max()) for d in dens.values()), default=1.0) or 1.0
    plot_h = height
    height = plot_h + 14 * len(dens) + 6  # legend rows under the x-axis label
    x0, x1, yb, yt = _PAD_L, width - _PAD_R, plot_h - _PAD_B, _PAD_T
    body = [_axes(width, plot_h, (lo, hi), (0.0, top), x_label)]
    for i, (name, d) in enumerate(dens.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        pts = [f"{x0:.1f},{yb:.1f}"]
        for j, v in enumerate(d):
            xa, xb = _scale(edges[j], lo, hi, x0, x1), _scale(edges[j + 1], lo, hi, x0, x1)
            yv = _scale(float(v), 0.0, top, yb, yt)
            pts += [f"{xa:.1f},{yv:.1f}", f"{xb:.1f},{yv:.1f}"]
        pts.append(f"{x1:.1f},{yb:.1f}")
        body.append(
            f'<polyline fill="{colour}" fill-opacity="0.15" stroke="{colour}" stroke-width="1.5" '
            f'points="{" ".join(pts)}"/>'
        )
        n = (counts or {}).get(name)
        legend = f"{name} (n={len(arrays[name]) if n is None else n})"
        body.append(
            f'<rect x="{x0}" y="{plot_h + 14 * i - 2}" width="10" height="10" fill="{colour}" fill-opacity="0.5"/>'
            f'<text x="{x0 + 14}" y="{plot_h + 14 * i + 7}" font-size="11" fill="{colour}">{escape(legend)}</text>'
        )
    for label, value in (markers or {}).items():
        if math.isfinite(value):
            body.append(_vline(_scale(value, lo, hi, x0, x1), plot_h, "#444", label))
    return _svg(width, height, title, "".join(body))


def _svg(width: int, height: int, title: str, body: str) -> str:
    t = f"<title>{escape(title)}</title>" if title else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">{t}{body}</svg>'
    )
