"""The segmentation page's map metrics: exact pooled AP / best Dice on every foreground voxel of the run's files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from medood.benchmark.maps import map_metrics


def _save(path: Path, a: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(a.astype(np.float32), np.eye(4)), str(path))


def test_map_metrics_are_exact_on_all_foreground_voxels(tmp_path: Path) -> None:
    run, images, masks = (tmp_path / d for d in ("run", "images", "masks"))
    for d in (run, images, masks):
        d.mkdir()
    rng = np.random.default_rng(1)
    all_s, all_y = [], []
    for i in range(4):
        img = np.zeros((20, 18, 6))
        img[2:18, 2:16] = 1.0 + rng.random((16, 14, 6))  # foreground
        y = np.zeros(img.shape, bool)
        y[5 + i : 10 + i, 6:9, 2:4] = True
        amap = (rng.random(img.shape) + 0.8 * y) * (img > 0)
        _save(images / f"c{i}_T1w.nii.gz", img)
        _save(masks / f"c{i}_lesion.nii.gz", y.astype(np.float32))
        _save(run / f"c{i}_T1w_anomaly_map.nii.gz", amap)
        fg = img > 0
        all_s.append(amap[fg].astype(np.float32)), all_y.append(y[fg])
    (run / "thresholds.json").write_text(json.dumps({"map_threshold": 0.9}))
    out = map_metrics(None, run, images, masks, n_boot=20)
    s, y = np.concatenate(all_s), np.concatenate(all_y)
    assert out["n_cases"] == 4 and out["map_threshold"] == 0.9
    assert out["pixel_ap"] == pytest.approx(average_precision_score(y, s))
    brute = max(2.0 * np.sum((s >= t) & y) / (np.sum(s >= t) + y.sum()) for t in np.unique(s[y]))
    assert out["best_dice"] == pytest.approx(brute)
    assert out["best_dice"] >= out["dice_at_calibrated"]  # the oracle is never below a fixed threshold's Dice
    lo, hi = out["best_dice_ci"]
    assert lo <= out["best_dice"] <= hi
