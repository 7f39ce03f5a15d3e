"""Voxel-level anomaly-segmentation metrics: pooled pixel AP, oracle best Dice, Dice at a fixed threshold.

All functions take the anomaly maps and lesion masks of several cases, either as one batch-first array
(``(B, 1, *spatial)`` or ``(B, *spatial)``; cases along the first axis) or as a sequence of per-case arrays of
any (possibly different) shapes. A mask voxel is a lesion where its value is ``> 0.5``, so boolean, 0/1 and
multi-label integer masks (BraTS 1/2/4) all work. An optional foreground (brain) mask restricts every metric to
the voxels inside it. Map and mask of a case must have the same shape (singleton axes aside).

**Pooling, as the MOOD challenge does:** AP and best Dice rank the voxels of all cases together, so large
lesions weigh more than small ones. For big volumes, ``max_voxels_per_case`` draws a seeded uniform random
subset of each case's (foreground) voxels (DISYRE evaluates 10k voxels per volume); the subset of case ``i``
depends only on ``(seed, i)``, so the same call always gives the same value.

A voxel is predicted anomalous when ``map >= threshold``, everywhere in this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from medood.metrics.functional import (
    ap_from_counts,
    auroc_from_split,
    rank_counts,
    require_both_classes,
)

__all__ = [
    "BestDice",
    "DiceCounter",
    "ThresholdDice",
    "VoxelPool",
    "best_dice",
    "best_dice_from_split",
    "dice_at_threshold",
    "iter_cases",
    "pixel_ap",
    "pixel_auroc",
]


def _case_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.float() if x.dtype.is_floating_point and x.dtype.itemsize < 4 else x
        x = x.numpy()
    return np.asarray(x)


def _same_shape(a: np.ndarray, b: np.ndarray, what: str, case: int) -> np.ndarray:
    """Return ``b`` reshaped like ``a`` when they agree up to singleton axes; raise otherwise."""
    if a.shape == b.shape:
        return b
    if a.size == b.size and tuple(d for d in a.shape if d != 1) == tuple(d for d in b.shape if d != 1):
        return b.reshape(a.shape)
    raise ValueError(f"case {case}: anomaly map shape {a.shape} does not match {what} shape {b.shape}")


def _as_cases(x: Any) -> Sequence[Any]:
    """A sequence of per-case arrays: list/tuple as given, an array split along its first axis."""
    if isinstance(x, (list, tuple)):
        return x
    arr = x if hasattr(x, "shape") else np.asarray(x)
    if len(arr.shape) == 0:
        raise ValueError("expected a batch of maps (B, ...) or a sequence of per-case arrays, got a scalar")
    return [arr[i] for i in range(arr.shape[0])]


def iter_cases(
    maps: Any, masks: Any, foreground: Any = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield validated ``(map, lesion, foreground)`` numpy arrays per case (lesion/foreground boolean).

    Args:
        maps: batch-first array or sequence of per-case anomaly maps.
        masks: lesion masks, same layout (``> 0.5`` = lesion).
        foreground: optional foreground masks, same layout (``> 0.5`` = inside). Defaults to ``None``.

    Yields:
        One tuple per case; the map keeps its float dtype (integer maps become float64).

    Raises:
        ValueError: on different case counts, shape mismatches, or NaN map values.
    """
    m_cases, y_cases = _as_cases(maps), _as_cases(masks)
    f_cases = None if foreground is None else _as_cases(foreground)
    if len(m_cases) != len(y_cases) or (f_cases is not None and len(f_cases) != len(m_cases)):
        counts = f"{len(m_cases)} maps, {len(y_cases)} masks" + ("" if f_cases is None else f", {len(f_cases)} fg")
        raise ValueError(f"different numbers of cases: {counts}")
    for i, (m, y) in enumerate(zip(m_cases, y_cases)):
        s = _case_array(m)
        if not np.issubdtype(s.dtype, np.floating):
            s = s.astype(np.float64)
        n_nan = int(np.isnan(s).sum())
        if n_nan:
            raise ValueError(f"case {i}: anomaly map has {n_nan} NaN voxels")
        lesion = _same_shape(s, _case_array(y), "mask", i) > 0.5
        fg = None
        if f_cases is not None:
            fg = _same_shape(s, _case_array(f_cases[i]), "foreground", i) > 0.5
        yield s, lesion, fg


class VoxelPool:
    """Collects the voxel scores of many cases, split into lesion and healthy voxels, with bounded memory.

    Args:
        max_voxels_per_case: keep at most this many (foreground) voxels per case, a seeded uniform random
            subset; ``None`` keeps all. Defaults to ``None``.
        seed: base seed; case ``i`` (in the order added) uses ``numpy.random.default_rng((seed, i))``.
            Defaults to 0.

    Example:
        >>> pool = VoxelPool(max_voxels_per_case=10_000)
        >>> for m, y in zip(maps, masks):
        ...     pool.add(m, y)
        >>> lesion_scores, healthy_scores = pool.split()
    """

    def __init__(self, max_voxels_per_case: int | None = None, seed: int = 0) -> None:
        if max_voxels_per_case is not None and max_voxels_per_case < 1:
            raise ValueError(f"max_voxels_per_case must be >= 1 or None, got {max_voxels_per_case}")
        self.max_voxels_per_case = max_voxels_per_case
        self.seed = int(seed)
        self.reset()

    def reset(self) -> None:
        """Forget every case added so far (the case counter restarts at 0)."""
        self._pos: list[np.ndarray] = []
        self._neg: list[np.ndarray] = []
        self.n_cases = 0

    def add_arrays(self, score_map: np.ndarray, lesion: np.ndarray, foreground: np.ndarray | None = None) -> int:
        """Add one validated case (see :func:`iter_cases`).

        Args:
            score_map: the case's map.
            lesion: boolean lesion mask of the same shape.
            foreground: optional boolean foreground of the same shape. Defaults to ``None``.

        Returns:
            The number of voxels kept for this case.
        """
        if foreground is not None:
            s, y = score_map[foreground], lesion[foreground]
        else:
            s, y = score_map.reshape(-1), lesion.reshape(-1)
        k = self.max_voxels_per_case
        if k is not None and s.size > k:
            idx = np.random.default_rng((self.seed, self.n_cases)).choice(s.size, size=k, replace=False)
            s, y = s[idx], y[idx]
        self._pos.append(np.array(s[y]))
        self._neg.append(np.array(s[~y]))
        self.n_cases += 1
        return int(s.size)

    def add(self, score_map: Any, mask: Any, foreground: Any = None) -> None:
        """Validate and add one case.

        Args:
            score_map: the case's anomaly map (any shape).
            mask: its lesion mask (same shape up to singleton axes).
            foreground: optional foreground mask. Defaults to ``None``.
        """
        fg = None if foreground is None else [foreground]
        for s, y, f in iter_cases([score_map], [mask], fg):
            self.add_arrays(s, y, f)

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """The pooled ``(lesion_scores, healthy_scores)`` of all cases added so far."""
        if not self._pos:
            return np.empty(0), np.empty(0)
        return np.concatenate(self._pos), np.concatenate(self._neg)

    @property
    def n_voxels(self) -> int:
        """Number of voxels held."""
        return int(sum(a.size for a in self._pos) + sum(a.size for a in self._neg))


def _pool(maps: Any, masks: Any, foreground: Any, max_voxels_per_case: int | None, seed: int) -> VoxelPool:
    pool = VoxelPool(max_voxels_per_case, seed)
    for s, y, fg in iter_cases(maps, masks, foreground):
        pool.add_arrays(s, y, fg)
    return pool


def pixel_ap(
    maps: Any, masks: Any, foreground: Any = None, max_voxels_per_case: int | None = None, seed: int = 0
) -> float:
    """Average precision over all voxels of all cases pooled (MOOD's pixel-level metric), lesion positive.

    AP is rank based, so maps need no clipping or normalisation. Equals
    ``sklearn.metrics.average_precision_score`` on the concatenated (sub-sampled) voxels.

    Args:
        maps: anomaly maps, batch-first array or sequence of per-case arrays (higher = more anomalous).
        masks: lesion masks, same layout.
        foreground: optional foreground (brain) masks restricting the voxels. Defaults to ``None``.
        max_voxels_per_case: seeded random subset size per case (``None`` = all voxels). Defaults to ``None``.
        seed: sub-sampling seed. Defaults to 0.

    Returns:
        The pooled AP.

    Raises:
        ValueError: on bad inputs, or when the (sampled) voxels contain no lesion or only lesion.
    """
    pos, neg = _pool(maps, masks, foreground, max_voxels_per_case, seed).split()
    return ap_from_counts(rank_counts(pos, neg, "voxels"))


def pixel_auroc(
    maps: Any, masks: Any, foreground: Any = None, max_voxels_per_case: int | None = None, seed: int = 0
) -> float:
    """Voxel-level AUROC over all cases pooled (lesion positive); arguments as :func:`pixel_ap`.

    Returns:
        The pooled AUROC.
    """
    pos, neg = _pool(maps, masks, foreground, max_voxels_per_case, seed).split()
    require_both_classes(pos, neg, "voxels")
    return auroc_from_split(pos, neg)


class BestDice(NamedTuple):
    """The oracle Dice and the threshold achieving it (predict lesion where ``map >= threshold``)."""

    dice: float
    threshold: float


def best_dice_from_split(pos: np.ndarray, neg: np.ndarray, n_thresholds: int | None = None) -> BestDice:
    """Best pooled Dice over thresholds, from lesion scores ``pos`` and healthy scores ``neg``.

    Args:
        pos: scores of lesion voxels.
        neg: scores of healthy voxels.
        n_thresholds: ``None`` = exact, over every distinct lesion score (the optimum is always at one of
            them); an integer = over that many quantiles of all scores. Defaults to ``None``.

    Returns:
        The best Dice and its threshold.
    """
    if n_thresholds is None:
        rc = rank_counts(pos, neg, "voxels")
        thresholds, tp, fp = rc.thresholds, rc.tp, rc.fp
    else:
        if n_thresholds < 1:
            raise ValueError(f"n_thresholds must be >= 1 or None, got {n_thresholds}")
        require_both_classes(pos, neg, "voxels")
        thresholds = np.unique(np.quantile(np.concatenate([pos, neg]), np.linspace(0.0, 1.0, n_thresholds)))
        thresholds = thresholds.astype(pos.dtype)  # compare in the maps' own precision
        pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
        tp = pos.size - np.searchsorted(pos_sorted, thresholds, side="left")
        fp = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
    dice = 2.0 * tp / (tp + fp + pos.size)
    best = int(np.argmax(dice))
    return BestDice(float(dice[best]), float(thresholds[best]))


def best_dice(
    maps: Any,
    masks: Any,
    foreground: Any = None,
    n_thresholds: int | None = None,
    max_voxels_per_case: int | None = None,
    seed: int = 0,
) -> BestDice:
    """The **oracle** Dice: the best pooled Dice over all thresholds, chosen on the test labels themselves.

    This is the upper bound most unsupervised-anomaly-segmentation papers report ("best possible Dice",
    "max-DICE"). A user cannot reach it: a real threshold must come from healthy validation data
    (``detector.calibration.thresholds(...)``); report :func:`dice_at_threshold` with that threshold next to it.

    Computed from one sort of the pooled voxels: Dice(t) = 2 TP(t) / (P(t) + G) with predictions
    ``map >= t``, exactly over every distinct lesion-voxel score (default) or over ``n_thresholds`` quantiles.

    Args:
        maps: anomaly maps, batch-first array or sequence of per-case arrays.
        masks: lesion masks, same layout.
        foreground: optional foreground masks restricting the voxels. Defaults to ``None``.
        n_thresholds: ``None`` = exact; an integer = quantile thresholds. Defaults to ``None``.
        max_voxels_per_case: seeded random subset size per case (``None`` = all). Defaults to ``None``.
        seed: sub-sampling seed. Defaults to 0.

    Returns:
        ``BestDice(dice, threshold)``.

    Raises:
        ValueError: on bad inputs, or when the (sampled) voxels contain no lesion or only lesion.
    """
    pos, neg = _pool(maps, masks, foreground, max_voxels_per_case, seed).split()
    return best_dice_from_split(pos, neg, n_thresholds)


class ThresholdDice(NamedTuple):
    """Dice of ``map >= threshold``.

    Attributes:
        pooled: Dice over all voxels of all cases pooled (``2 sum TP / (sum P + sum G)``).
        mean_per_case: mean of the per-case Dice over the cases whose mask contains a lesion (cases without
            a lesion have no defined Dice and are skipped, like MONAI's ``ignore_empty``); NaN if none has one.
        n_cases: the number of cases in that mean.
    """

    pooled: float
    mean_per_case: float
    n_cases: int


class DiceCounter:
    """Accumulates the Dice of ``map >= threshold`` case by case (exact; keeps three counts per case).

    Args:
        threshold: the map threshold, chosen on healthy validation data.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)
        self.tp = self.n_pred = self.n_gt = 0
        self.per_case: list[float] = []

    def add_arrays(self, score_map: np.ndarray, lesion: np.ndarray, foreground: np.ndarray | None = None) -> None:
        """Add one validated case (see :func:`iter_cases`); voxels outside ``foreground`` are ignored."""
        pred = score_map >= self.threshold
        if foreground is not None:
            pred, lesion = pred & foreground, lesion & foreground
        tp, n_pred, n_gt = (int(np.count_nonzero(a)) for a in (pred & lesion, pred, lesion))
        self.tp, self.n_pred, self.n_gt = self.tp + tp, self.n_pred + n_pred, self.n_gt + n_gt
        if n_gt:
            self.per_case.append(2.0 * tp / (n_pred + n_gt))

    def result(self) -> ThresholdDice:
        """The pooled and per-case mean Dice of everything added.

        Raises:
            ValueError: when no case contains a lesion voxel.
        """
        if self.n_gt == 0:
            raise ValueError("the masks contain no lesion voxel (inside the foreground); Dice is undefined")
        mean = float(np.mean(self.per_case)) if self.per_case else float("nan")
        return ThresholdDice(2.0 * self.tp / (self.n_pred + self.n_gt), mean, len(self.per_case))


def dice_at_threshold(maps: Any, masks: Any, threshold: float, foreground: Any = None) -> ThresholdDice:
    """Dice of the segmentation ``map >= threshold`` -- the figure a user gets with a fixed threshold.

    Exact on all voxels (no sub-sampling needed: only per-case counts are kept).

    Args:
        maps: anomaly maps, batch-first array or sequence of per-case arrays.
        masks: lesion masks, same layout.
        threshold: the map threshold, chosen on healthy validation data.
        foreground: optional foreground masks; voxels outside are ignored. Defaults to ``None``.

    Returns:
        ``ThresholdDice(pooled, mean_per_case, n_cases)``.

    Raises:
        ValueError: on bad inputs, or when no case contains a lesion voxel.
    """
    counter = DiceCounter(threshold)
    for s, y, fg in iter_cases(maps, masks, foreground):
        counter.add_arrays(s, y, fg)
    return counter.result()
