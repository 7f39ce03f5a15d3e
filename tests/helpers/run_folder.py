"""A tiny bundle run folder (what a bundle's inference leaves) for the report, Slicer and MONAI Label tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medood.data.image2d import write_map_nifti_2d
from medood.handlers.writers import write_map_nifti, write_scores_csv, write_slice_scores_csv

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def make_run_3d(root: Path, n_cases: int = 3, thresholds: bool = True) -> Path:
    """Inputs in ``root/inputs``, outputs in ``root/run``: maps, masks, CSVs, metrics and thresholds."""
    rng = np.random.default_rng(0)
    inputs, run = root / "inputs", root / "run"
    inputs.mkdir(parents=True)
    rows, slice_rows = [], []
    for i in range(n_cases):
        name = f"sub-{i:02d}_T1w"
        image = np.zeros((10, 12, 8), np.float32)
        image[2:8, 2:10, 1:7] = 1.0 + 0.1 * rng.random((6, 8, 6))
        nib.save(nib.Nifti1Image(image, AFFINE), str(inputs / f"{name}.nii.gz"))
        amap = 0.1 * rng.random(image.shape).astype(np.float32)
        if i > 0:  # a "lesion" in every case but the first
            amap[4:6, 5:7, 3 + i % 3] = 2.0
        write_map_nifti(amap, AFFINE, run / f"{name}_anomaly_map.nii.gz")
        write_map_nifti(amap >= 0.5, AFFINE, run / f"{name}_anomaly_seg.nii.gz", np.uint8)
        rows.append({"case": name, "score": float(amap.max()), "label": int(i > 0), "flagged": int(amap.max() > 1)})
        slice_rows += [(name, 2, z, float(amap[..., z].max())) for z in range(amap.shape[2])]
    write_scores_csv(run / "scores.csv", rows)
    write_slice_scores_csv(run / "slice_scores.csv", slice_rows)
    (run / "metrics.json").write_text(json.dumps({"volume": {"auroc": 1.0, "n_healthy": 1}, "note": "x"}))
    if thresholds:
        t = {"map_threshold": 0.5, "score_threshold": 1.0, "window": [0.5, 2.0], "id_scores": [0.05, 0.08, 0.1]}
        (run / "thresholds.json").write_text(json.dumps(t))
    return run


def make_run_2d(root: Path) -> Path:
    """A 2D run: PNG inputs, single-slice NIfTI maps and overlay PNGs, ``scores.csv`` with an image column."""
    from PIL import Image

    inputs, run = root / "inputs2d", root / "run2d"
    inputs.mkdir(parents=True)
    run.mkdir()
    rows = []
    for i in range(2):
        name = f"img{i}"
        Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8) * 5).save(inputs / f"{name}.png")
        amap = np.full((6, 8), 0.1 * i, np.float32)
        write_map_nifti_2d(amap, run / f"{name}_anomaly_map.nii.gz")
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(run / f"{name}_anomaly_overlay.png")
        rows.append({"case": name, "score": float(amap.max()), "image": str(inputs / f"{name}.png")})
    lines = ["case,score,image"] + [f"{r['case']},{r['score']},{r['image']}" for r in rows]
    (run / "scores.csv").write_text("\n".join(lines) + "\n")  # with the image column a writer may add
    return run
