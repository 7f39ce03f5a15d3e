"""CaseVoxelCounts: exact pooled AP / best Dice of case-level resamples, against scikit-learn and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from medood.metrics.case_counts import CaseVoxelCounts
from medood.metrics.segmentation import best_dice, pixel_ap


def _cases(seed: int = 0, n: int = 6) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    maps, masks, fgs = [], [], []
    for i in range(n):
        y = np.zeros((12, 10), bool)
        if i % 3:  # some cases without lesion
            y[2 + i : 6 + i, 3:7] = True
        m = rng.normal(size=y.shape).astype(np.float32) + 1.5 * y
        m[0, :4] = m[0, 0]  # ties
        fg = np.ones_like(y)
        fg[:, 0] = False
        maps.append(m), masks.append(y), fgs.append(fg)
    return maps, masks, fgs


def _brute_best_dice(s: np.ndarray, y: np.ndarray) -> float:
    return max(2.0 * np.sum((s >= t) & y) / (np.sum(s >= t) + y.sum()) for t in np.unique(s[y]))


@pytest.mark.parametrize("draw", [None, [0, 1, 1, 4, 5, 5], [2, 2, 2, 3], [1, 3, 0, 0]])
def test_resampled_cases_match_the_concatenated_voxels(draw: list[int] | None) -> None:
    maps, masks, fgs = _cases()
    counts = CaseVoxelCounts(maps, masks, fgs)
    idx = list(range(len(maps))) if draw is None else draw
    s = np.concatenate([maps[i][fgs[i]] for i in idx])
    y = np.concatenate([masks[i][fgs[i]] for i in idx])
    assert counts.pixel_ap(None if draw is None else np.array(draw)) == pytest.approx(average_precision_score(y, s))
    dice, thr = counts.best_dice(None if draw is None else np.array(draw))
    assert dice == pytest.approx(_brute_best_dice(s, y))
    assert 2.0 * np.sum((s >= thr) & y) / (np.sum(s >= thr) + y.sum()) == pytest.approx(dice)
    if draw is None:  # the existing pooled functions on all voxels agree
        assert counts.pixel_ap() == pytest.approx(pixel_ap(maps, masks, fgs))
        assert dice == pytest.approx(best_dice(maps, masks, fgs).dice)


def test_a_draw_without_lesions_is_refused() -> None:
    maps, masks, _ = _cases()
    counts = CaseVoxelCounts(maps, masks)
    with pytest.raises(ValueError, match="lesion"):
        counts.pixel_ap(np.array([0, 3, 3]))  # cases 0 and 3 hold no lesion
    with pytest.raises(ValueError, match="no lesion voxels"):
        CaseVoxelCounts([maps[0]], [masks[0]])
