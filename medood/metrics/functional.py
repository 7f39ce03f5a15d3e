"""Image-level OOD metrics as pure functions: AUROC, AUPR-In, AUPR-Out, FPR at a TPR, average precision.

Conventions (one for the whole package):

* **score: higher = more OOD / more anomalous**;
* **OOD is the positive class** (``is_ood == 1``), except where a function says otherwise (``aupr_in``, and
  ``fpr_at_tpr``, whose FPR95 follows the literature: OOD accepted at 95 % ID TPR).

Every function takes scores and labels as torch tensors, numpy arrays or lists (any shape; they are flattened)
and returns a Python ``float``. Labels must be binary (``0``/``1`` or boolean). All metrics are computed exactly
from sorted scores (no threshold grid): ties are resolved the way scikit-learn resolves them (samples with equal
scores enter and leave the predicted-positive set together), so the values equal ``sklearn.metrics`` to
floating-point precision. Scores of either class with a NaN, inputs of different lengths, and inputs that
hold only one class raise ``ValueError``.

The computation works on the two sorted score sets (positives, negatives) and ``np.searchsorted``; it never
materialises a ranking of the pooled data, so ten million scores take about a second.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = [
    "RankCounts",
    "ap_from_counts",
    "aupr_in",
    "aupr_out",
    "auroc",
    "auroc_from_split",
    "average_precision",
    "fpr_at_tpr",
    "rank_counts",
    "require_both_classes",
    "slice_level_metrics",
    "split_by_label",
]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Flatten a tensor, array, scalar or list into a 1D numpy array (floats keep their precision)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch eagerly
        x = x.detach().cpu()
        x = x.float() if x.dtype.is_floating_point and x.dtype.itemsize < 4 else x  # bf16/fp16 -> fp32
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name}: cannot convert to a numeric array (ragged or non-numeric input)")
    return arr.reshape(-1)


def _check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        if scores.dtype != bool:
            raise ValueError(f"{name}: expected numeric values, got dtype {scores.dtype}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    n_nan = int(np.isnan(scores).sum())
    if n_nan:
        raise ValueError(f"{name}: {n_nan} of {scores.size} values are NaN")
    return scores


def _check_labels(labels: np.ndarray, name: str = "is_ood") -> np.ndarray:
    if labels.dtype == bool:
        return labels
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"{name}: expected binary 0/1 labels, got dtype {labels.dtype}")
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        found = np.unique(labels[bad])[:5].tolist()
        raise ValueError(f"{name}: labels must be 0 (ID) or 1 (OOD); found {found}")
    return labels.astype(bool)


def split_by_label(scores: Any, labels: Any, label_name: str = "is_ood") -> tuple[np.ndarray, np.ndarray]:
    """Validate scores and binary labels and split the scores into ``(positives, negatives)``.

    Args:
        scores: one score per sample.
        labels: ``1``/``True`` for the positive class, ``0``/``False`` for the negative class.
        label_name: name used in error messages. Defaults to ``"is_ood"``.

    Returns:
        The scores of the positive samples and of the negative samples (1D arrays, input order).

    Raises:
        ValueError: on NaN scores, non-binary labels, or different lengths.
    """
    s = _check_scores(_to_numpy(scores, "scores"))
    y = _check_labels(_to_numpy(labels, label_name), label_name)
    if s.shape != y.shape:
        raise ValueError(f"scores and {label_name} differ in length: {s.size} vs {y.size}")
    return s[y], s[~y]


class RankCounts(NamedTuple):
    """Counts at every distinct positive score ``u`` (ascending), for thresholds "predict positive if s >= u".

    Attributes:
        thresholds: the distinct positive scores, ascending.
        tp: positives with score ``>= u``.
        fp: negatives with score ``>= u``.
        n_pos: number of positives.
        n_neg: number of negatives.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int


def require_both_classes(pos: np.ndarray, neg: np.ndarray, what: str = "samples") -> None:
    """Raise ``ValueError`` unless both the positive and the negative set are non-empty.

    Args:
        pos: scores of the positive samples.
        neg: scores of the negative samples.
        what: what the samples are, for the message. Defaults to ``"samples"``.

    Raises:
        ValueError: when either set is empty (ranking metrics are undefined with one class).
    """
    if pos.size == 0 or neg.size == 0:
        missing = "positive (OOD / lesion)" if pos.size == 0 else "negative (ID / healthy)"
        raise ValueError(
            f"only one class present: no {missing} {what} among {pos.size + neg.size}; "
            "ranking metrics need both classes"
        )


def rank_counts(pos: np.ndarray, neg: np.ndarray, what: str = "samples") -> RankCounts:
    """Sort the two score sets and count true / false positives at each distinct positive score.

    Only thresholds equal to a positive score matter for AP and Dice: between two of them the true positives
    do not change while the false positives can only grow.

    Args:
        pos: scores of the positive samples.
        neg: scores of the negative samples.
        what: what the samples are, for error messages. Defaults to ``"samples"``.

    Returns:
        The counts.

    Raises:
        ValueError: when either set is empty (the metric is undefined with one class).
    """
    require_both_classes(pos, neg, what)
    pos_sorted = np.sort(pos, kind="stable")
    neg_sorted = np.sort(neg, kind="stable")
    thresholds = np.unique(pos_sorted)
    tp = pos_sorted.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, thresholds, side="left")
    return RankCounts(thresholds, tp.astype(np.int64), fp.astype(np.int64), int(pos.size), int(neg.size))


def ap_from_counts(rc: RankCounts) -> float:
    """Step-wise AP ``sum_k (R_k - R_{k-1}) P_k`` over thresholds, descending (sklearn's definition).

    Args:
        rc: counts from :func:`rank_counts`.

    Returns:
        The average precision.
    """
    gained = rc.tp - np.append(rc.tp[1:], 0)  # positives exactly at each threshold
    precision = rc.tp / (rc.tp + rc.fp)
    return float(np.sum(gained * precision) / rc.n_pos)


def auroc_from_split(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC as Mann-Whitney ``U / (n_pos n_neg)``, ties counted 1/2 (identical to the trapezoidal ROC area).

    Args:
        pos: scores of the positive samples (non-empty).
        neg: scores of the negative samples (non-empty).

    Returns:
        The AUROC.
    """
    neg_sorted = np.sort(neg, kind="stable")
    below = np.searchsorted(neg_sorted, pos, side="left").astype(np.float64)
    equal = np.searchsorted(neg_sorted, pos, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (float(pos.size) * float(neg.size)))


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision with label 1 positive, exactly as ``sklearn.metrics.average_precision_score``.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct scores in decreasing order (no interpolation).

    Args:
        scores: one score per sample, higher = more likely positive.
        labels: binary labels, 1 = positive.

    Returns:
        AP in ``[0, 1]``.

    Raises:
        ValueError: on NaN, non-binary labels, different lengths, or one-class input.
    """
    pos, neg = split_by_label(scores, labels, "labels")
    return ap_from_counts(rank_counts(pos, neg))


def auroc(scores: Any, is_ood: Any) -> float:
    """Area under the ROC curve with OOD positive (= ``sklearn.metrics.roc_auc_score``).

    It equals the probability that a random OOD sample scores higher than a random ID sample, ties counting
    one half. 0.5 is chance; 0.0 means the score is perfectly reversed.

    Args:
        scores: one score per sample, higher = more OOD.
        is_ood: 1 for OOD samples, 0 for ID samples.

    Returns:
        AUROC in ``[0, 1]``.

    Raises:
        ValueError: on NaN, non-binary labels, different lengths, or one-class input.
    """
    pos, neg = split_by_label(scores, is_ood)
    require_both_classes(pos, neg)
    return auroc_from_split(pos, neg)


def aupr_out(scores: Any, is_ood: Any) -> float:
    """Area under the precision-recall curve with **OOD positive** (average precision on the scores).

    Args:
        scores: one score per sample, higher = more OOD.
        is_ood: 1 for OOD samples, 0 for ID samples.

    Returns:
        AUPR-Out in ``[0, 1]``; chance level is the OOD fraction.

    Raises:
        ValueError: on NaN, non-binary labels, different lengths, or one-class input.
    """
    pos, neg = split_by_label(scores, is_ood)
    return ap_from_counts(rank_counts(pos, neg))


def aupr_in(scores: Any, is_ood: Any) -> float:
    """Area under the precision-recall curve with **ID positive**, on the negated scores.

    Equals ``sklearn.metrics.average_precision_score(1 - is_ood, -scores)``.

    Args:
        scores: one score per sample, higher = more OOD.
        is_ood: 1 for OOD samples, 0 for ID samples.

    Returns:
        AUPR-In in ``[0, 1]``; chance level is the ID fraction.

    Raises:
        ValueError: on NaN, non-binary labels, different lengths, or one-class input.
    """
    pos, neg = split_by_label(scores, is_ood)
    return ap_from_counts(rank_counts(-neg, -pos))


def _min_count(tpr: float, n: int) -> int:
    """The smallest ``k`` with ``k / n >= tpr`` in floating point (the comparison sklearn's ROC points make)."""
    k = min(max(math.ceil(tpr * n), 1), n)
    while k > 1 and (k - 1) / n >= tpr:
        k -= 1
    while k < n and k / n < tpr:
        k += 1
    return k


def _fpr_at_tpr_pos(pos: np.ndarray, neg: np.ndarray, tpr: float) -> float:
    """FPR at the highest threshold ``t`` (predict positive iff ``score >= t``) whose TPR reaches ``tpr``."""
    pos_desc = np.sort(pos)[::-1]
    k = _min_count(tpr, pos.size)
    threshold = pos_desc[k - 1]  # the k-th highest positive score: >= k positives at or above it
    neg_sorted = np.sort(neg)
    n_fp = neg.size - int(np.searchsorted(neg_sorted, threshold, side="left"))
    return n_fp / neg.size


def fpr_at_tpr(scores: Any, is_ood: Any, tpr: float = 0.95, positive: Literal["ood", "id"] = "id") -> float:
    """False-positive rate at the threshold where the positive class reaches a true-positive rate of ``tpr``.

    ``positive="id"`` (the default): the fraction of **OOD** samples accepted as ID at the lowest threshold that
    still accepts ``tpr`` (95 %) of the **ID** samples (accepting means ``score <= threshold``, ties count as
    accepted); i.e. "FPR of OOD at 95 % ID TPR", the number OpenOOD, NERO, ODIN and most OOD papers call FPR95,
    so medood's tables compare with published ones.

    ``positive="ood"``: the fraction of **ID** samples flagged as OOD at the highest score threshold that still
    flags ``tpr`` of the **OOD** samples. Flagging means
    ``score >= threshold``; ID samples tied with the threshold count as false positives. This is the smallest
    FPR over the points of ``sklearn.metrics.roc_curve`` with TPR >= ``tpr``, computed exactly from the sorted
    scores. The two conventions give different numbers on the same scores; tables say which one they use.

    Args:
        scores: one score per sample, higher = more OOD.
        is_ood: 1 for OOD samples, 0 for ID samples.
        tpr: target true-positive rate in ``(0, 1]``. Defaults to 0.95.
        positive: which class is positive, ``"id"`` or ``"ood"``. Defaults to ``"id"``.

    Returns:
        The FPR in ``[0, 1]`` (lower is better).

    Raises:
        ValueError: on a bad ``tpr`` or ``positive``, NaN, non-binary labels, different lengths, or one-class
            input.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    pos, neg = split_by_label(scores, is_ood)
    require_both_classes(pos, neg)
    if positive == "ood":
        return _fpr_at_tpr_pos(pos, neg, tpr)
    if positive == "id":
        return _fpr_at_tpr_pos(-neg, -pos, tpr)
    raise ValueError(f"positive must be 'ood' or 'id', got {positive!r}")


def slice_level_metrics(slice_scores: Any, slice_has_lesion: Any) -> dict[str, float]:
    """AP and AUROC over slices (lesion slices positive), pooled over all slices of all cases.

    Slice scores come from reducing an anomaly map over each slice (``medood.utils.reduce_slices``).

    Args:
        slice_scores: one score per slice (any shape, e.g. ``(cases, slices)``; flattened).
        slice_has_lesion: same shape; 1 / ``True`` where the slice contains lesion voxels.

    Returns:
        ``{"slice_ap": ..., "slice_auroc": ...}``.

    Raises:
        ValueError: on NaN, different sizes, or when all slices (or none) contain a lesion.
    """
    pos, neg = split_by_label(slice_scores, slice_has_lesion, "slice_has_lesion")
    rc = rank_counts(pos, neg, "slices")
    return {"slice_ap": ap_from_counts(rc), "slice_auroc": auroc_from_split(pos, neg)}
