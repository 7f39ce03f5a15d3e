"""Map metrics of the anomaly-segmentation task, with case-level bootstrap intervals.

Pixel AP (pooled voxels, lesion positive), the oracle best Dice (threshold chosen on the test labels, as papers
report it), the Dice at the **calibrated** threshold (split-conformal on healthy validation map values at a
per-voxel marginal false-alarm rate ``map_alpha``: a threshold a user can actually apply), and slice AP (slice
scores of the run along the file's last voxel axis, a slice positive when it holds lesion voxels). Pixel AP and
best Dice are exact on every foreground voxel, for the point estimate and every bootstrap resample
(:class:`medood.metrics.case_counts.CaseVoxelCounts`); the rest from :mod:`medood.metrics.segmentation` /
:mod:`medood.metrics.functional`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medood.benchmark.stats import bootstrap_statistic
from medood.metrics.case_counts import CaseVoxelCounts
from medood.metrics.functional import slice_level_metrics
from medood.metrics.segmentation import dice_at_threshold
from medood.utils.conformal import conformal_threshold

__all__ = ["map_metrics"]

_VOXELS = 20000  # healthy validation voxels per case sampled for the calibrated map threshold (seeded)


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)  # type: ignore[attr-defined]


def _slice_scores(run: Path, axis: int = 2) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    path = run / "slice_scores.csv"
    if path.is_file():
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                if int(r["axis"]) == axis:
                    out.setdefault(r["case"], {})[int(r["slice"])] = float(r["score"])
    return out


def _threshold(val_run: Path | None, test_run: Path, map_alpha: float) -> tuple[float, dict[str, Any]]:
    """Split-conformal map threshold on healthy validation maps, or the one the run used (``val_run`` ``None``).

    The latter is the bundle's calibration shipped with its weights (``thresholds.json``; healthy validation
    data, not test data).
    """
    if val_run is None:
        record = json.loads((test_run / "thresholds.json").read_text())
        return float(record["map_threshold"]), {
            **(record.get("map_rule") or {}),
            "source": "the bundle's shipped calibration",
        }
    rng = np.random.default_rng(0)
    healthy = []
    for p in sorted(val_run.glob("*_anomaly_map.nii.gz")):
        v = _load(p).reshape(-1)
        v = v[np.isfinite(v) & (v != 0)]
        healthy.append(rng.choice(v, min(v.size, _VOXELS), replace=False))
    thr = conformal_threshold(np.concatenate(healthy), map_alpha)
    return thr.threshold, {**thr._asdict(), "rule": "split-conformal", "scope": "per-voxel marginal"}


def map_metrics(
    val_run: Path | None, test_run: Path, test_images: Path, masks: Path, map_alpha: float = 0.005, n_boot: int = 200
) -> dict[str, Any]:
    """Map metrics of a run on lesioned test volumes; map threshold as :func:`_threshold`."""
    threshold, rule = _threshold(val_run, test_run, map_alpha)
    cases = sorted(p.name.replace("_lesion.nii.gz", "") for p in masks.glob("*_lesion.nii.gz"))
    cases = [c for c in cases if (test_run / f"{c}_T1w_anomaly_map.nii.gz").is_file()]
    maps = [_load(test_run / f"{c}_T1w_anomaly_map.nii.gz") for c in cases]
    gts = [_load(masks / f"{c}_lesion.nii.gz") > 0 for c in cases]
    fgs = [_load(test_images / f"{c}_T1w.nii.gz") > 0 for c in cases]
    idx = np.arange(len(cases))

    counts = CaseVoxelCounts(maps, gts, fgs)  # exact pooled AP / best Dice of any case resample, all voxels

    def ap(i: np.ndarray) -> float:
        return counts.pixel_ap(i)

    def dice_cal(i: np.ndarray) -> float:
        return dice_at_threshold([maps[k] for k in i], [gts[k] for k in i], threshold,
                                 [fgs[k] for k in i]).pooled  # fmt: skip

    def dice_best(i: np.ndarray) -> float:
        return counts.best_dice(i)[0]

    sl = _slice_scores(test_run)
    s_scores, s_labels = [], []
    for c, gt in zip(cases, gts, strict=True):
        per = sl.get(f"{c}_T1w", {})
        has = np.asarray(gt.reshape(-1, gt.shape[-1]).any(0))
        for k, score in per.items():
            if k < has.size:
                s_scores.append(score)
                s_labels.append(bool(has[k]))
    out: dict[str, Any] = {
        "n_cases": len(cases),
        "map_threshold": threshold,
        "map_rule": rule,
        "pixel_ap": ap(idx),
        "pixel_ap_ci": bootstrap_statistic(idx, ap, n_boot),
        "best_dice": dice_best(idx),
        "best_dice_ci": bootstrap_statistic(idx, dice_best, n_boot),
        "dice_at_calibrated": dice_cal(idx),
        "dice_at_calibrated_ci": bootstrap_statistic(idx, dice_cal, n_boot),
    }
    if s_scores and 0 < sum(s_labels) < len(s_labels):
        s = np.array(s_scores)
        lab = np.array(s_labels)
        out["slice_ap"] = slice_level_metrics(s, lab)["slice_ap"]
        sidx = np.arange(s.size)
        out["slice_ap_ci"] = bootstrap_statistic(
            sidx, lambda i: slice_level_metrics(s[i], lab[i])["slice_ap"], n_boot
        )  # slices resampled (not cases): a narrower interval than a case-level one
    return out
