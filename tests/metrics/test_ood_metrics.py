"""MONAI cumulative wrappers: batch accumulation equals the pure functions; reset; input formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.metrics import (
    OOD_METRIC_NAMES,
    BestDiceMetric,
    OODMetrics,
    OODScoreMetric,
    VoxelAPMetric,
    aupr_in,
    aupr_out,
    auroc,
    best_dice,
    fpr_at_tpr,
    pixel_ap,
)


def _data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    return rng.normal(size=n) + 0.8 * y, y


def test_ood_metrics_accumulates_mixed_batch_formats() -> None:
    s, y = _data()
    metric = OODMetrics()
    metric(y_pred=torch.tensor(s[:10]), y=torch.tensor(y[:10]))  # batch-first (B,)
    metric(y_pred=torch.tensor(s[10:20])[:, None], y=torch.tensor(y[10:20])[:, None])  # (B, 1)
    metric(y_pred=[torch.tensor(v) for v in s[20:30]], y=[torch.tensor(v) for v in y[20:30]])  # decollated
    metric(y_pred=s[30:].tolist(), y=y[30:])  # lists / arrays
    out = metric.aggregate()
    assert tuple(out) == OOD_METRIC_NAMES
    assert out["auroc"] == pytest.approx(auroc(s, y), abs=1e-12)
    assert out["aupr_in"] == pytest.approx(aupr_in(s, y), abs=1e-12)
    assert out["aupr_out"] == pytest.approx(aupr_out(s, y), abs=1e-12)
    assert out["fpr95"] == pytest.approx(fpr_at_tpr(s, y), abs=1e-12)


def test_ood_metrics_reset_and_errors() -> None:
    s, y = _data()
    metric = OODMetrics(fpr_positive="id", tpr=0.9)
    metric(torch.tensor(s), torch.tensor(y))
    assert metric.aggregate()["fpr95"] == pytest.approx(fpr_at_tpr(s, y, 0.9, positive="id"))
    metric.reset()
    with pytest.raises(ValueError, match="no data"):
        metric.aggregate()
    metric(torch.tensor(s[y == 0]), torch.tensor(y[y == 0]))
    with pytest.raises(ValueError, match="only one class"):
        metric.aggregate()
    with pytest.raises(ValueError, match="one value per image"):
        metric(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="unknown OOD metric"):
        OODScoreMetric("accuracy")


def test_score_metric_returns_one_float() -> None:
    s, y = _data(seed=2)
    metric = OODScoreMetric("aupr_out")
    metric(torch.tensor(s), torch.tensor(y))
    value = metric.aggregate()
    assert isinstance(value, float)
    assert value == pytest.approx(aupr_out(s, y))


def _maps(seed: int = 0, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n, 1, 12, 12, 12, generator=g) < 0.1).float()
    maps = torch.randn(n, 1, 12, 12, 12, generator=g) + masks
    return maps, masks


def test_voxel_metrics_match_functional_with_same_sampling() -> None:
    maps, masks = _maps()
    ap, bd = VoxelAPMetric(max_voxels_per_case=500, seed=3), BestDiceMetric(max_voxels_per_case=500, seed=3)
    for metric in (ap, bd):
        metric(maps[:2], masks[:2])  # batch-first
        kept = metric(list(maps[2:]), list(masks[2:]))  # list of channel-first cases
        assert kept.tolist() == [500, 500, 500]
    assert ap.aggregate() == pytest.approx(pixel_ap(maps, masks, max_voxels_per_case=500, seed=3), abs=1e-12)
    dice, threshold = bd.aggregate(return_threshold=True)
    ref = best_dice(maps, masks, max_voxels_per_case=500, seed=3)
    assert (dice, threshold) == pytest.approx(tuple(ref), abs=1e-12)
    assert bd.threshold == threshold
    first = ap.aggregate()
    ap.reset()
    ap(maps, masks)
    assert ap.aggregate() == pytest.approx(first, abs=1e-12), "reset must restart the seeded case sequence"


def test_voxel_metric_foreground_and_exact_mode() -> None:
    maps, masks = _maps(1, n=3)
    fg = torch.zeros_like(masks)
    fg[..., 2:10, 2:10, 2:10] = 1
    metric = VoxelAPMetric(max_voxels_per_case=None)
    metric(maps, masks, foreground=fg)
    assert metric.aggregate() == pytest.approx(pixel_ap(maps, masks, foreground=fg), abs=1e-12)
    with pytest.raises(ValueError, match="lesion masks"):
        metric(maps)
