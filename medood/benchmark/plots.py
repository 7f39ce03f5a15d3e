"""PNG plots of the evidence page, drawn with Pillow (no plotting library needed).

ROC curves per OOD set, ID vs OOD score histograms, example maps, and grouped bars of values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medood.utils.io import atomic_path

__all__ = ["bars_png", "histogram_png", "map_png", "roc_png"]

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
W, H, M = 420, 360, 40


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return path


def _axes(draw: ImageDraw.ImageDraw, title: str, xlabel: str, ylabel: str) -> None:
    draw.rectangle([M, M // 2, W - 10, H - M], outline=(0, 0, 0))
    draw.text((M, 2), title, fill=(0, 0, 0))
    draw.text((W // 2 - 30, H - M + 14), xlabel, fill=(0, 0, 0))
    draw.text((2, M // 2 + 4), ylabel, fill=(0, 0, 0))


def _xy(x: float, y: float) -> tuple[float, float]:
    return M + x * (W - 10 - M), H - M - y * (H - M - M // 2)


def roc_png(path: Path, title: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """ROC curves (FPR, TPR; OOD positive) of several detectors, legend with their AUROC in the lower right."""
    from sklearn.metrics import roc_curve  # the curve's points only; the metrics come from medood.metrics

    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    _axes(draw, title, "FPR (ID flagged)", "TPR")
    draw.line([_xy(0, 0), _xy(1, 1)], fill=(200, 200, 200))
    for k, (name, (id_s, ood_s)) in enumerate(curves.items()):
        labels = np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))]
        fpr, tpr, _ = roc_curve(labels, np.r_[id_s, ood_s])
        colour = _COLOURS[k % len(_COLOURS)]
        draw.line([_xy(float(a), float(b)) for a, b in zip(fpr, tpr, strict=True)], fill=colour, width=2)
        draw.text((W - 170, H - M - 14 * (len(curves) - k) - 4), name, fill=colour)
    return _save(img, path)


def histogram_png(path: Path, title: str, id_scores: np.ndarray, ood: Mapping[str, np.ndarray], bins: int = 30) -> Path:
    """Score histograms (density) of the ID test set and of OOD sets, on one shared range."""
    allv = np.concatenate([id_scores, *ood.values()])
    lo, hi = np.percentile(allv, [0.5, 99.5])
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    hists = {"ID test": np.histogram(np.clip(id_scores, lo, hi), edges, density=True)[0]}
    hists.update({k: np.histogram(np.clip(v, lo, hi), edges, density=True)[0] for k, v in ood.items()})
    top = max(float(h.max()) for h in hists.values()) or 1.0
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    _axes(draw, title, f"score ({lo:.3g} .. {hi:.3g})", "density")
    for k, (name, h) in enumerate(hists.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        pts = []
        for i, v in enumerate(h):
            pts += [_xy(i / bins, v / top), _xy((i + 1) / bins, v / top)]
        draw.line(pts, fill=colour, width=2)
        draw.text((W - 170, M // 2 + 4 + 14 * k), name, fill=colour)
    return _save(img, path)


def map_png(
    path: Path, image: np.ndarray, amap: np.ndarray, window: Sequence[float], mask: np.ndarray | None = None
) -> Path:
    """One slice: the grey image with the map (red, alpha by map value within ``window``) and the mask outline."""
    g = np.asarray(image, np.float64)
    g = (g - g.min()) / (np.ptp(g) or 1.0)
    a = np.clip((np.asarray(amap, np.float64) - window[0]) / max(window[1] - window[0], 1e-12), 0, 1)
    rgb = np.stack([g, g, g], -1) * (1 - a[..., None] * 0.7)
    rgb[..., 0] += a * 0.7
    if mask is not None:
        m = np.asarray(mask, bool)
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        rgb[edge] = (0.1, 0.9, 0.1)
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).rotate(90, expand=True)
    return _save(img.resize((img.width * 3, img.height * 3), Image.Resampling.NEAREST), path)


def bars_png(path: Path, title: str, groups: Mapping[str, Mapping[str, float]], ylabel: str, ref: float = 0.5) -> Path:
    """Grouped bars of values in [0, 1] (e.g. AUROCs), a grey line at ``ref`` (chance for an AUROC).

    One group per key of ``groups``, one colour per series (the keys of each group; legend in the upper left).
    """
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    _axes(draw, title, "", ylabel)
    draw.line([_xy(0, ref), _xy(1, ref)], fill=(160, 160, 160))
    for v in (0.0, ref, 1.0):
        draw.text((M - 22, _xy(0, v)[1] - 6), f"{v:g}", fill=(0, 0, 0))
    series = list(dict.fromkeys(k for g in groups.values() for k in g))
    width = 1 / max(len(groups), 1)
    bar = width * 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(groups.items()):
        x0 = i * width + width * 0.1
        draw.text((_xy(x0, 0)[0], H - M + 2), name, fill=(0, 0, 0))
        for k, s in enumerate(series):
            if s in values:
                v = min(max(float(values[s]), 0.0), 1.0)
                (xa, ya), (xb, yb) = _xy(x0 + k * bar, v), _xy(x0 + (k + 1) * bar, 0)
                draw.rectangle([xa, ya, xb - 1, yb], fill=_COLOURS[k % len(_COLOURS)])
    for k, s in enumerate(series):
        draw.text((M + 4, M // 2 + 4 + 12 * k), s, fill=_COLOURS[k % len(_COLOURS)])
    return _save(img, path)
