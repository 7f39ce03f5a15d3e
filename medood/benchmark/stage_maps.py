"""Anomaly-map sweeps on cached per-stage volumes (the MIM-OOD / AR validation scripts' shared parts).

Pure functions on numpy / torch arrays, no script state:

* lesion components and their size buckets (:func:`bucket_of`, :func:`components`; the buckets of
  :data:`medood.data.demo.shifted_site.SIZE_BUCKETS` by default);
* map quality of maps against lesion masks (:func:`seg_figures`: pixel AP, oracle best Dice, Dice at a given
  threshold, optionally the per-case mean AP) and per size bucket (:func:`bucket_figures`: lesions detected by
  the map or by a flag volume, and the map figures with the other buckets' lesions left out);
* the healthy map values a threshold is fitted on (:func:`healthy_values`, :func:`healthy_map_threshold`:
  split-conformal), percentiles of healthy scores (:func:`percentile_table`), volume AUROCs of several volume
  scores (:func:`volume_aurocs`), token / voxel ranking and recall-precision figures (:func:`ranking`,
  :func:`flag_quality`);
* the choice by the worst case over sets (:func:`rank_worst_case`, :func:`choose_worst_case`);
* cached stage volumes as compressed ``.npz`` (:func:`save_stage_volumes`, :func:`load_stage_volumes`).

Used by ``scripts/tune_mim_validation.py``, ``scripts/diagnose_mim.py`` and :mod:`medood.benchmark.mim_shift`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from scipy import ndimage as ndi

from medood.data.demo.shifted_site import SIZE_BUCKETS
from medood.metrics import auroc, average_precision, best_dice, dice_at_threshold, pixel_ap
from medood.utils.conformal import conformal_threshold
from medood.utils.io import atomic_path

__all__ = [
    "SIZE_BUCKETS",
    "bucket_figures",
    "bucket_of",
    "choose_worst_case",
    "components",
    "flag_quality",
    "healthy_map_threshold",
    "healthy_values",
    "load_stage_volumes",
    "percentile_table",
    "rank_worst_case",
    "ranking",
    "save_stage_volumes",
    "seg_figures",
    "volume_aurocs",
]

T = TypeVar("T")
#: ``{name: (lowest voxel count, first count above)}``, as :data:`~medood.data.demo.shifted_site.SIZE_BUCKETS`
Buckets = Mapping[str, tuple[float, float]]
#: one case of :func:`seg_figures`: ``(map, lesion mask, foreground mask)``, arrays or tensors of one shape
SegCase = tuple[Any, Any, Any]


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ------------------------------------------------------------------------------------------- lesion components
def bucket_of(n: int, buckets: Buckets = SIZE_BUCKETS) -> str:
    """The name of the size bucket ``lo <= n < hi`` of a lesion of ``n`` voxels.

    Raises:
        ValueError: ``n`` is in no bucket.
    """
    for name, (lo, hi) in buckets.items():
        if lo <= n < hi:
            return name
    raise ValueError(f"a lesion of {n} voxels is in no size bucket of {dict(buckets)}")


def components(label: Any, buckets: Buckets = SIZE_BUCKETS) -> list[tuple[str, np.ndarray]]:
    """The 3D-connected (26-neighbour) components of a lesion mask, in label order.

    Returns:
        ``(size bucket, boolean mask)`` per component (:func:`scipy.ndimage.label`).
    """
    mask = _np(label).astype(bool)
    lab, n = ndi.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return [(bucket_of(int((lab == i).sum()), buckets), lab == i) for i in range(1, n + 1)]


# ------------------------------------------------------------------------------------------- map figures
def seg_figures(
    cases: Sequence[SegCase], threshold: float, sample: int | None = None, case_ap: bool = False
) -> dict[str, float]:
    """Pooled map figures of ``(map, lesion mask, foreground)`` cases.

    Args:
        cases: per case the map, its lesion mask and the foreground the figures are restricted to.
        threshold: the map threshold of the Dice at threshold (fitted on healthy data).
        sample: voxels per case (seeded) for pixel AP and best Dice; ``None``: every voxel.
        case_ap: also the mean over cases of each case's own AP (every lesioned volume weighs the same).

    Returns:
        ``pixel_ap`` (:func:`~medood.metrics.pixel_ap`), ``best_dice`` (oracle, :func:`~medood.metrics.best_dice`),
        ``dice_at_threshold`` (:func:`~medood.metrics.dice_at_threshold`, pooled) and, with ``case_ap``,
        ``case_ap``.
    """
    maps, masks, fgs = ([_np(c[i]) for c in cases] for i in range(3))
    out = {
        "pixel_ap": float(pixel_ap(maps, masks, foreground=fgs, max_voxels_per_case=sample)),
        "best_dice": float(best_dice(maps, masks, foreground=fgs, max_voxels_per_case=sample)[0]),
        "dice_at_threshold": float(dice_at_threshold(maps, masks, threshold, foreground=fgs).pooled),
    }
    if case_ap:
        out["case_ap"] = float(np.mean([pixel_ap([m], [k], foreground=[f]) for m, k, f in zip(maps, masks, fgs)]))
    return out


def bucket_figures(
    cases: Sequence[SegCase],
    threshold: float,
    flagged: Sequence[Any] | None = None,
    buckets: Buckets = SIZE_BUCKETS,
) -> dict[str, dict[str, float]]:
    """Per lesion-size bucket: how many lesions, the fraction detected, and the map figures of that bucket.

    ``cases`` are ``(map, lesion mask, foreground)`` as in :func:`seg_figures`. A lesion component
    (:func:`components`) is detected by the map when one of its voxels is ``>= threshold``, by ``flagged`` (e.g.
    the in-painted tokens at voxel resolution) when one of its voxels is ``> 0``. The map figures
    (:func:`seg_figures`, every voxel) of a bucket use the lesions of that bucket as positives and leave the other
    buckets' lesion voxels out of the foreground. Buckets without a lesion are left out.

    Returns:
        ``{bucket: {"lesions", "detected_map", ["detected_flagged"], "pixel_ap", "best_dice",
        "dice_at_threshold"}}`` in bucket order.
    """
    maps_np, fgs_np = [_np(c[0]) for c in cases], [_np(c[2]).astype(bool) for c in cases]
    flags_np = None if flagged is None else [_np(f) > 0 for f in flagged]
    comps = [components(c[1], buckets) for c in cases]
    out: dict[str, dict[str, float]] = {}
    for b in buckets:
        sel: list[SegCase] = []
        total = hit_map = hit_flag = 0
        for i, cs in enumerate(comps):
            fg = fgs_np[i].copy()
            mask = np.zeros_like(fg)
            for bb, c in cs:
                if bb == b:
                    mask |= c
                    total += 1
                    hit_map += int((maps_np[i][c] >= threshold).any())
                    hit_flag += int(flags_np is not None and flags_np[i][c].any())
                else:
                    fg &= ~c
            if mask.any():
                sel.append((maps_np[i], mask, fg))
        if not sel:
            continue
        row: dict[str, float] = {"lesions": total, "detected_map": hit_map / total}
        if flags_np is not None:
            row["detected_flagged"] = hit_flag / total
        out[b] = {**row, **seg_figures(sel, threshold)}
    return out


def healthy_values(maps: Iterable[Any], foregrounds: Iterable[Any]) -> np.ndarray:
    """The map values inside the foreground of every (healthy) case, concatenated in case order."""
    return np.concatenate([_np(m)[_np(f).astype(bool)].ravel() for m, f in zip(maps, foregrounds)])


def healthy_map_threshold(values: np.ndarray, alpha: float, max_values: int = 2_000_000) -> float:
    """Split-conformal voxel threshold at false-alarm rate ``alpha`` on healthy map values.

    :func:`~medood.utils.conformal.conformal_threshold` on every ``len // max_values``-th value (a regular,
    deterministic thinning).
    """
    values = np.asarray(values).ravel()
    return float(conformal_threshold(values[:: max(1, values.size // max_values)], alpha).threshold)


def percentile_table(values: Any, percentiles: Iterable[float], max_values: int = 2**24) -> dict[float, float]:
    """``{p: the p-th percentile}`` of the first ``max_values`` of ``values`` (flattened, float64).

    :func:`torch.quantile` (linear interpolation, as :func:`numpy.percentile`), which takes at most ``2**24`` values;
    e.g. the healthy token-NLL percentiles a flagging threshold is chosen from.
    """
    v = torch.as_tensor(values).flatten().double()[:max_values]
    return {p: float(torch.quantile(v, p / 100)) for p in percentiles}


def volume_aurocs(scores: Mapping[str, Sequence[float]], lesioned: Sequence[int]) -> dict[str, float]:
    """AUROC (lesioned positive) of each volume score: ``{name: per-volume scores}`` in the order of ``lesioned``."""
    y = np.asarray(lesioned)
    return {k: float(auroc(np.asarray(s, dtype=np.float64), y)) for k, s in scores.items()}


def ranking(score: Any, target: Any) -> dict[str, float]:
    """AUROC and AP of ``score`` against a boolean ``target`` (both flattened; target positive)."""
    s, y = _np(score).ravel(), _np(target).ravel()
    return {"auroc": float(auroc(s, y)), "ap": float(average_precision(s, y))}


def flag_quality(flagged: Any, target: Any) -> dict[str, float]:
    """Recall and precision of a boolean decision ``flagged`` against ``target`` (0 when there is nothing to count)."""
    f, y = _np(flagged).astype(bool), _np(target).astype(bool)
    tp = float((f & y).sum())
    return {"recall": tp / max(float(y.sum()), 1.0), "precision": tp / max(float(f.sum()), 1.0)}


# ------------------------------------------------------------------------------------------- choosing
def rank_worst_case(
    rows: Sequence[T],
    views: Callable[[T], Iterable[Any]],
    score: Callable[[Any], float],
    gate: Callable[[Any], float] | None = None,
    slack: float = 0.0,
) -> list[T]:
    """Rows best first by their worst case over sets.

    Args:
        rows: the candidates (settings with their figures).
        views: a row's figures on each set it is judged on (e.g. clean and shifted validation).
        score: the figure of merit of one view; a row's worth is its lowest ``score`` over its views.
        gate: optional second figure: only rows whose lowest ``gate`` is within ``slack`` of the best such value
            are kept.
        slack: see ``gate``.

    Returns:
        The kept rows, highest worst-case ``score`` first (ties keep the order of ``rows``).
    """
    if gate is not None:
        worst_gate = [min(gate(v) for v in views(r)) for r in rows]
        best = max(worst_gate)
        rows = [r for r, g in zip(rows, worst_gate) if g >= best - slack]
    return sorted(rows, key=lambda r: min(score(v) for v in views(r)), reverse=True)


def choose_worst_case(
    rows: Sequence[T],
    views: Callable[[T], Iterable[Any]],
    score: Callable[[Any], float],
    gate: Callable[[Any], float] | None = None,
    slack: float = 0.0,
) -> T:
    """The first row of :func:`rank_worst_case` (the first of equally good rows)."""
    return rank_worst_case(rows, views, score, gate, slack)[0]


# ------------------------------------------------------------------------------------------- cache
def save_stage_volumes(
    path: Path, volumes: Mapping[str, Any], seconds: float, binary: Sequence[str] = ("flagged", "label")
) -> Path:
    """Atomically write stage volumes as compressed ``.npz``, with the ``seconds`` they took.

    ``binary`` volumes as uint8 (``> 0.5``; integer / bool ones as they are), the rest as float16.

    Returns:
        ``path``.
    """
    arrays: dict[str, Any] = {"seconds": np.asarray(seconds)}
    for k, v in volumes.items():
        a = _np(v)
        if k in binary:
            arrays[k] = (a if a.dtype.kind in "biu" else a > 0.5).astype(np.uint8)
        else:
            arrays[k] = a.astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_stage_volumes(path: Path, masks: Sequence[str] = ("label",)) -> dict[str, Any]:
    """The volumes of a :func:`save_stage_volumes` file.

    Returns:
        ``{name: float32 tensor}``, ``masks`` as bool tensors (``None`` when absent), ``seconds`` as a float.
    """
    with np.load(path) as z:
        out: dict[str, Any] = {
            k: torch.from_numpy(z[k].astype(np.float32)) for k in z.files if k != "seconds" and k not in masks
        }
        out["seconds"] = float(z["seconds"])
        for k in masks:
            out[k] = torch.from_numpy(z[k].astype(bool)) if k in z.files else None
    return out
