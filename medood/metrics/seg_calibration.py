"""Calibration of voxel-wise predictions: expected calibration error (ECE) and negative log-likelihood.

Pure functions on ``(N, K)`` class probabilities (voxels or pixels pooled over a data set) and ``(N,)`` labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["expected_calibration_error", "reliability_bins"]


def _as_probs_labels(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    p = torch.as_tensor(probs).double()
    y = torch.as_tensor(labels).reshape(-1).long()
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be (N, K) with one label per row, got {tuple(p.shape)} and {tuple(y.shape)}")
    if p.shape[0] == 0:
        raise ValueError("no samples")
    return p, y


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label reliability diagram: per equal-width confidence bin ``(lo, hi]`` its count, accuracy, confidence.

    Args:
        probs: ``(N, K)`` class probabilities (rows sum to 1).
        labels: ``(N,)`` true classes.
        n_bins: number of bins over ``[0, 1]``. Defaults to 15.

    Returns:
        ``{"edges": (n_bins + 1,), "count", "accuracy", "confidence": (n_bins,)}`` (empty bins: 0 accuracy and
        confidence).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, y = _as_probs_labels(probs, labels)
    conf, pred = p.max(dim=1)
    correct = (pred == y).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges[1:-1], right=False)  # bin b holds (edges[b], edges[b+1]]; 0 -> bin 0
    count = torch.bincount(idx, minlength=n_bins).double()
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    safe = count.clamp_min(1)
    return {
        "edges": edges.numpy(),
        "count": count.numpy(),
        "accuracy": (acc_sum / safe).numpy(),
        "confidence": (conf_sum / safe).numpy(),
    }


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE: ``sum_b n_b / N * |accuracy_b - confidence_b|`` over equal-width confidence bins.

    Args:
        probs: ``(N, K)`` class probabilities.
        labels: ``(N,)`` true classes.
        n_bins: number of bins. Defaults to 15 (Guo et al. 2017).

    Returns:
        The ECE in ``[0, 1]`` (lower is better).
    """
    bins = reliability_bins(probs, labels, n_bins)
    weights = bins["count"] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"] - bins["confidence"])))
