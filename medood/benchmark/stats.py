"""Intervals for the benchmark: case-level bootstrap of every OOD metric, paired bootstrap of AUROC differences.

Seeded. The metrics themselves are :func:`medood.metrics.tables.ood_metrics` (checked against sklearn).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medood.metrics.functional import auroc
from medood.metrics.tables import METRICS, ood_metrics

__all__ = [
    "as_runs",
    "bootstrap_metrics",
    "flagged_rate",
    "paired_auroc_difference",
    "paired_holds",
    "paired_mean_auroc_difference",
    "paired_text",
    "set_aurocs",
    "summarise_runs",
]


def _metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    return ood_metrics(torch.from_numpy(id_scores), torch.from_numpy(ood_scores))


def _resamples(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(n_boot, n))


def bootstrap_metrics(
    id_scores: np.ndarray, ood_scores: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float | list[float]]:
    """AUROC, FPR95, AUPR-In / -Out and their percentile bootstrap intervals.

    Cases are resampled with replacement, ID and OOD separately (stratified: every resample keeps both set sizes),
    ``n_boot`` times from a seeded generator.

    Returns:
        ``{metric: value, metric + "_ci": [lo, hi]}`` for every metric of :data:`~medood.metrics.tables.METRICS`.
    """
    id_scores, ood_scores = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    rng = np.random.default_rng(seed)
    ids, oods = _resamples(id_scores.size, n_boot, rng), _resamples(ood_scores.size, n_boot, rng)
    boots = {m: np.empty(n_boot) for m in METRICS}
    for b in range(n_boot):
        values = _metrics(id_scores[ids[b]], ood_scores[oods[b]])
        for m in METRICS:
            boots[m][b] = values[m]
    out: dict[str, float | list[float]] = dict(_metrics(id_scores, ood_scores))
    tail = 100 * (1 - level) / 2
    for m in METRICS:
        out[f"{m}_ci"] = [float(np.percentile(boots[m], tail)), float(np.percentile(boots[m], 100 - tail))]
    return out


def _auroc_difference(id_a: np.ndarray, ood_a: np.ndarray, id_b: np.ndarray, ood_b: np.ndarray,
                      i: np.ndarray, o: np.ndarray) -> float:  # fmt: skip
    labels = np.r_[np.zeros(i.size), np.ones(o.size)]
    return auroc(np.r_[id_a[i], ood_a[o]], labels) - auroc(np.r_[id_b[i], ood_b[o]], labels)


def _paired_summary(observed: float, boots: np.ndarray, n_boot: int) -> dict[str, float | list[float]]:
    p = min(1.0, 2 * min(float(np.mean(boots <= 0)), float(np.mean(boots >= 0))))
    return {
        "difference": float(observed),
        "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
        "p": max(p, 1.0 / n_boot),
    }


def paired_auroc_difference(
    id_a: np.ndarray, ood_a: np.ndarray, id_b: np.ndarray, ood_b: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, float | list[float]]:
    """AUROC(a) - AUROC(b) on the same cases, its paired bootstrap 95 % interval and a two-sided p-value.

    Both detectors scored the same cases in the same order; each resample draws the same case indices for both
    (the pairing), ID and OOD separately. ``p`` = twice the smaller tail fraction of resampled differences on
    either side of 0 (at least ``1 / n_boot``).
    """
    id_a, ood_a, id_b, ood_b = (np.asarray(x, np.float64) for x in (id_a, ood_a, id_b, ood_b))
    if id_a.shape != id_b.shape or ood_a.shape != ood_b.shape:
        raise ValueError("paired comparison needs both detectors' scores on the same cases")
    rng = np.random.default_rng(seed)
    ids, oods = _resamples(id_a.size, n_boot, rng), _resamples(ood_a.size, n_boot, rng)
    observed = _auroc_difference(id_a, ood_a, id_b, ood_b, np.arange(id_a.size), np.arange(ood_a.size))
    boots = np.array([_auroc_difference(id_a, ood_a, id_b, ood_b, ids[b], oods[b]) for b in range(n_boot)])
    return _paired_summary(observed, boots, n_boot)


def paired_mean_auroc_difference(
    id_a: np.ndarray,
    oods_a: Sequence[np.ndarray],
    id_b: np.ndarray,
    oods_b: Sequence[np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean over OOD sets of AUROC(a) - AUROC(b), its paired bootstrap 95 % interval and a two-sided p-value.

    As :func:`paired_auroc_difference`, over several OOD sets scored against one ID set: each resample draws the
    ID cases once (shared by every set, as the per-set AUROCs share them) and each OOD set's cases, the same
    indices for both detectors. Scores are ``(N,)`` or ``(N, R)``: ``R`` training runs of each detector (e.g.
    seeds), run ``r`` of ``a`` paired with run ``r`` of ``b`` on the same resampled cases; the difference is
    averaged over the sets and the runs. With ``(N, R)`` scores, ``runs``: the observed difference of each run
    (mean over the sets).

    Raises:
        ValueError: no OOD set, or the two detectors' scores are not on the same cases (and runs).
    """
    with_runs = np.ndim(id_a) > 1
    id_a, id_b = as_runs(id_a), as_runs(id_b)
    oods_a, oods_b = [as_runs(x) for x in oods_a], [as_runs(x) for x in oods_b]
    if not oods_a or id_a.shape != id_b.shape or [x.shape for x in oods_a] != [x.shape for x in oods_b]:
        raise ValueError("paired comparison needs both detectors' scores on the same cases of at least one OOD set")
    if any(x.shape[1] != id_a.shape[1] for x in oods_a):
        raise ValueError("every set needs the same number of runs")
    rng = np.random.default_rng(seed)
    ids = _resamples(id_a.shape[0], n_boot, rng)
    oods = [_resamples(x.shape[0], n_boot, rng) for x in oods_a]
    n_runs = id_a.shape[1]

    def mean_diff(i: np.ndarray, os: Sequence[np.ndarray]) -> np.ndarray:
        return np.mean([[_auroc_difference(id_a[:, r], a[:, r], id_b[:, r], b[:, r], i, o) for r in range(n_runs)]
                        for a, b, o in zip(oods_a, oods_b, os)], axis=0)  # fmt: skip

    observed = mean_diff(np.arange(id_a.shape[0]), [np.arange(x.shape[0]) for x in oods_a])
    boots = np.array([mean_diff(ids[b], [o[b] for o in oods]).mean() for b in range(n_boot)])
    out: dict[str, Any] = dict(_paired_summary(float(observed.mean()), boots, n_boot))
    if with_runs:
        out["runs"] = [float(v) for v in observed]
    return out


def as_runs(x: np.ndarray) -> np.ndarray:
    """Scores as ``(N, R)`` float64 (a ``(N,)`` array is one run)."""
    x = np.asarray(x, np.float64)
    return x[:, None] if x.ndim == 1 else x


def flagged_rate(scores: np.ndarray, threshold: float | None) -> float | None:
    """Fraction of ``scores`` above ``threshold`` (``None`` when there is no threshold)."""
    if threshold is None:
        return None
    return float(np.mean(np.asarray(scores, np.float64) > threshold))


def bootstrap_statistic(
    values: np.ndarray, statistic: Callable[[np.ndarray], float], n_boot: int = 1000, seed: int = 0
) -> list[float]:
    """Percentile 95 % interval of ``statistic`` over case resamples of ``values`` (first axis)."""
    rng = np.random.default_rng(seed)
    idx = _resamples(len(values), n_boot, rng)
    boots = np.array([statistic(values[i]) for i in idx])
    return [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def set_aurocs(
    scores: Mapping[str, np.ndarray],
    id_key: str,
    mask: Mapping[str, np.ndarray] | None = None,
    digits: int | None = 4,
) -> dict[str, float]:
    """AUROC (OOD positive) of every set of ``scores`` against the ID set ``id_key``, and their ``mean``.

    Args:
        scores: ``{set: per-case scores}``, the ID set among them.
        id_key: the name of the ID set.
        mask: optional ``{set: boolean mask}`` selecting the cases of each set (e.g. one contrast).
        digits: rounding of every value (``None``: none).

    Returns:
        ``{set: AUROC, ..., "mean": mean over the sets}`` in the order of ``scores`` (ID set left out).
    """

    def pick(k: str) -> np.ndarray:
        v = np.asarray(scores[k], dtype=np.float64)
        return v[np.asarray(mask[k], dtype=bool)] if mask else v

    def rounded(v: float) -> float:
        return v if digits is None else round(v, digits)

    ids = pick(id_key)
    out = {}
    for k in scores:
        if k != id_key:
            ood = pick(k)
            out[k] = rounded(auroc(np.r_[ids, ood], np.r_[np.zeros(ids.size), np.ones(ood.size)]))
    out["mean"] = rounded(float(np.mean(list(out.values()))))
    return out


def paired_holds(diff: dict[str, Any] | None) -> bool | None:
    """True / False when the paired 95 % interval excludes 0 (better / worse), ``None`` when it includes 0."""
    if not diff:
        return None
    lo, hi = diff["ci"]
    return True if lo > 0 else False if hi < 0 else None


def paired_text(d: dict[str, Any]) -> str:
    """A paired AUROC difference in points: ``+1.2 [-0.3, +2.8], p=0.120``."""
    lo, hi = d["ci"]
    return f"{100 * d['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p={d['p']:.3f}"


def summarise_runs(runs: list[Any]) -> Any:
    """Nested dicts of per-run numbers averaged over the runs (same keys in every run; ints kept from run 0)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: summarise_runs([r[k] for r in runs]) for k in first}
    if isinstance(first, bool | int):
        return first
    return float(np.mean(runs))
