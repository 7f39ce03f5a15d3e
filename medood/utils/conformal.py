"""The one threshold rule of medood: split-conformal thresholds with a finite-sample false-alarm guarantee.

Given ``n`` in-distribution calibration scores (higher = more OOD) and a requested false-alarm rate ``alpha``,
the threshold is the ``k``-th smallest score with ``k = ceil((n + 1) * (1 - alpha))``. A new in-distribution
score exchangeable with the calibration scores is then flagged (``score > threshold``) with probability at most
``alpha``, whatever the score's distribution (Vovk et al. 2005; Angelopoulos & Bates, "A Gentle Introduction to
Conformal Prediction", 2021, section 1). The marginal false-alarm rate is ``1 - k / (n + 1)`` when scores have no
ties, so it lies in ``(alpha - 1 / (n + 1), alpha]``.

The rule needs ``k <= n``, i.e. ``n >= ceil(1 / alpha) - 1``: with fewer cases no calibration score is high
enough to guarantee ``alpha`` and :func:`conformal_threshold` refuses, saying how many cases are needed.

Every flag, mask and guard threshold in medood is computed here, so the rule lives in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "CalibrationSizeError",
    "ConformalThreshold",
    "conformal_rank",
    "conformal_threshold",
    "min_calibration_size",
]


class CalibrationSizeError(ValueError):
    """Too few calibration cases for the requested false-alarm rate (the message says how many are needed)."""

    def __init__(self, n: int, alpha: float, what: str = "in-distribution cases") -> None:
        self.n = n
        self.alpha = alpha
        self.needed = min_calibration_size(alpha)
        super().__init__(
            f"{n} {what} cannot guarantee a false-alarm rate of {alpha:g}: the split-conformal threshold needs "
            f"at least {self.needed} (n >= 1/alpha - 1); add cases or ask for a larger alpha"
            + (f" (with {n}, the smallest alpha is {1.0 / (n + 1):.3g})" if n > 0 else "")
        )


class ConformalThreshold(NamedTuple):
    """A threshold and what it guarantees.

    Attributes:
        threshold: flag a score when ``score > threshold``.
        alpha: the requested false-alarm rate.
        n: number of calibration scores used.
        rank: ``k``, the rank (1-based, ascending) of the calibration score taken as the threshold.
        expected_rate: ``1 - k / (n + 1)``, the marginal false-alarm rate on exchangeable data (``<= alpha``).
    """

    threshold: float
    alpha: float
    n: int
    rank: int
    expected_rate: float

    def to_dict(self) -> dict[str, float | int | str]:
        """JSON-able record (what ``thresholds.json`` stores)."""
        return {
            "rule": "split-conformal",
            "threshold": self.threshold,
            "alpha": self.alpha,
            "n": self.n,
            "rank": self.rank,
            "expected_rate": self.expected_rate,
        }


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha (the false-alarm rate) must be in (0, 1), got {alpha}")
    return alpha


def min_calibration_size(alpha: float) -> int:
    """Smallest number of calibration scores for which ``alpha`` can be guaranteed: ``ceil(1/alpha) - 1``.

    Computed as the smallest ``n`` with ``ceil((n + 1)(1 - alpha)) <= n`` (exact, no float surprises).
    """
    alpha = _check_alpha(alpha)
    n = max(1, math.ceil(1.0 / alpha) - 2)
    while conformal_rank(n, alpha) > n:
        n += 1
    return n


def conformal_rank(n: int, alpha: float) -> int:
    """``k = ceil((n + 1)(1 - alpha))``, the 1-based rank of the threshold among ``n`` sorted scores.

    A tiny tolerance keeps values such as ``(19 + 1) * 0.95 = 19.000000000000004`` at 19.
    """
    alpha = _check_alpha(alpha)
    return math.ceil((n + 1) * (1.0 - alpha) - 1e-9)


def conformal_threshold(scores: Sequence[float] | np.ndarray, alpha: float) -> ConformalThreshold:
    """The split-conformal threshold of in-distribution ``scores`` for false-alarm rate ``alpha``.

    Args:
        scores: in-distribution calibration scores (higher = more OOD); non-finite values are an error.
        alpha: requested false-alarm rate in ``(0, 1)``.

    Returns:
        The threshold (flag ``score > threshold``) with ``alpha``, ``n``, the rank and the expected rate.

    Raises:
        ValueError: ``alpha`` outside ``(0, 1)``, no scores, or non-finite scores.
        CalibrationSizeError: ``n < min_calibration_size(alpha)``.
    """
    alpha = _check_alpha(alpha)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("conformal calibration needs at least one in-distribution score")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"conformal calibration got {int((~np.isfinite(values)).sum())} non-finite scores")
    n = int(values.size)
    k = conformal_rank(n, alpha)
    if k > n:
        raise CalibrationSizeError(n, alpha)
    threshold = float(np.partition(values, k - 1)[k - 1])
    return ConformalThreshold(threshold, alpha, n, k, 1.0 - k / (n + 1))
