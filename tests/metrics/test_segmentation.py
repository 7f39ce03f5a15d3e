"""Voxel-level metrics: pooled AP vs scikit-learn, oracle best Dice vs brute force, Dice at a threshold, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from medood.metrics import VoxelPool, best_dice, dice_at_threshold, pixel_ap, pixel_auroc


def _cases(seed: int = 0, shapes=((8, 8, 8), (6, 10, 4), (5, 5, 7))) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for shape in shapes:
        lesion = rng.random(shape) < 0.15
        maps.append(np.round(rng.normal(size=shape) + 1.2 * lesion, 1).astype(np.float32))  # ties on purpose
        masks.append(lesion.astype(np.uint8))
    return maps, masks


def _pooled(maps: list, masks: list, fg: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    if fg is None:
        fg = [np.ones_like(m, dtype=bool) for m in masks]
    s = np.concatenate([m[f > 0].ravel() for m, f in zip(maps, fg)])
    y = np.concatenate([k[f > 0].ravel() for k, f in zip(masks, fg)])
    return s, y


def _dice(s: np.ndarray, y: np.ndarray, t: float) -> float:
    pred = s >= t
    return 2.0 * np.sum(pred & (y > 0)) / (pred.sum() + (y > 0).sum())


def test_pixel_ap_equals_sklearn_pooled() -> None:
    maps, masks = _cases()
    s, y = _pooled(maps, masks)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=1e-9)


def test_batch_tensor_and_list_give_same_value() -> None:
    maps, masks = _cases(shapes=((8, 8),) * 3)
    batch_maps = torch.tensor(np.stack(maps))[:, None]  # (B, 1, H, W)
    batch_masks = torch.tensor(np.stack(masks))[:, None]
    assert pixel_ap(batch_maps, batch_masks) == pytest.approx(pixel_ap(maps, masks), abs=1e-12)


def test_foreground_restricts_voxels() -> None:
    maps, masks = _cases(1)
    fg = [np.pad(np.ones([d - 2 for d in m.shape]), 1) for m in maps]
    s, y = _pooled(maps, masks, fg)
    assert pixel_ap(maps, masks, foreground=fg) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert pixel_ap(maps, masks, foreground=fg) != pytest.approx(pixel_ap(maps, masks), abs=1e-6)


def test_multilabel_masks_count_as_lesion() -> None:
    maps, masks = _cases(2)
    relabelled = [np.where(k > 0, 4, 0) for k in masks]  # BraTS-style label values
    assert pixel_ap(maps, relabelled) == pytest.approx(pixel_ap(maps, masks), abs=1e-12)


def test_best_dice_equals_brute_force_and_bounds_fixed_thresholds() -> None:
    maps, masks = _cases(3, shapes=((4, 5, 3), (3, 3, 3)))
    s, y = _pooled(maps, masks)
    candidates = np.r_[np.unique(s), np.inf]
    brute = max(_dice(s, y, t) for t in candidates)
    dice, threshold = best_dice(maps, masks)
    assert dice == pytest.approx(brute, abs=1e-12)
    assert dice_at_threshold(maps, masks, threshold).pooled == pytest.approx(dice, abs=1e-12)
    for t in np.linspace(s.min() - 0.1, s.max() + 0.1, 25):
        assert dice >= dice_at_threshold(maps, masks, float(t)).pooled - 1e-12
    quantile_dice, _ = best_dice(maps, masks, n_thresholds=10)
    assert quantile_dice <= dice + 1e-12
    assert quantile_dice > 0.5 * dice


def test_dice_at_threshold_by_hand() -> None:
    m1 = np.array([[0.9, 0.8], [0.1, 0.0]])  # predicted {0,1}; lesion {0,2}: tp 1, pred 2, gt 2 -> 0.5
    k1 = np.array([[1, 0], [1, 0]])
    m2 = np.array([[0.7, 0.2], [0.2, 0.2]])  # predicted {0}; lesion {0}: dice 1
    k2 = np.array([[1, 0], [0, 0]])
    m3 = np.array([[0.6, 0.0], [0.0, 0.0]])  # no lesion: predicted 1 voxel counts as FP (pooled) only
    k3 = np.zeros((2, 2))
    res = dice_at_threshold([m1, m2, m3], [k1, k2, k3], threshold=0.5)
    assert res.pooled == pytest.approx(2 * 2 / (4 + 3))
    assert res.mean_per_case == pytest.approx((0.5 + 1.0) / 2)
    assert res.n_cases == 2


def test_subsampling_is_seeded_and_close_on_a_big_case() -> None:
    rng = np.random.default_rng(5)
    shape = (48, 48, 48)
    maps, masks = [], []
    for _ in range(2):
        lesion = np.zeros(shape, dtype=bool)
        c = rng.integers(10, 38, 3)
        lesion[c[0] - 6 : c[0] + 6, c[1] - 6 : c[1] + 6, c[2] - 6 : c[2] + 6] = True
        maps.append((rng.normal(size=shape) + 1.5 * lesion).astype(np.float32))
        masks.append(lesion)
    full = pixel_ap(maps, masks)
    a = pixel_ap(maps, masks, max_voxels_per_case=20_000, seed=1)
    assert a == pixel_ap(maps, masks, max_voxels_per_case=20_000, seed=1)
    assert a != pixel_ap(maps, masks, max_voxels_per_case=20_000, seed=2)
    assert a == pytest.approx(full, abs=0.03)
    d_full, _ = best_dice(maps, masks)
    d_sub, _ = best_dice(maps, masks, max_voxels_per_case=20_000, seed=1)
    assert d_sub == pytest.approx(d_full, abs=0.03)


def test_voxel_pool_keeps_bounded_count() -> None:
    pool = VoxelPool(max_voxels_per_case=100, seed=0)
    pool.add(np.random.default_rng(0).random((20, 20)), np.eye(20))
    pool.add(np.zeros((5, 5)), np.ones((5, 5)))
    assert pool.n_voxels == 125
    assert pool.n_cases == 2
    pos, neg = pool.split()
    assert pos.size + neg.size == 125
    assert pos.size >= 25
    pool.reset()
    assert pool.n_voxels == 0


@pytest.mark.parametrize(
    ("maps", "masks", "match"),
    [
        ([np.zeros((4, 4))], [np.zeros((4, 5))], "does not match"),
        ([np.full((4, 4), np.nan)], [np.ones((4, 4))], "NaN"),
        ([np.linspace(0, 1, 16).reshape(4, 4)], [np.zeros((4, 4))], "only one class"),
        ([np.zeros((4, 4))] * 2, [np.zeros((4, 4))], "different numbers of cases"),
    ],
)
def test_bad_voxel_input_raises(maps: list, masks: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pixel_ap(maps, masks)


def test_no_lesion_dice_raises() -> None:
    with pytest.raises(ValueError, match="no lesion"):
        dice_at_threshold([np.linspace(0, 1, 9).reshape(3, 3)], [np.zeros((3, 3))], 0.5)
    with pytest.raises(ValueError, match="only one class"):
        best_dice([np.linspace(0, 1, 9).reshape(3, 3)], [np.zeros((3, 3))])
