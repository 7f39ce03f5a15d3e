"""The MIM bundle's inference on a folder mixing good and bad volumes: every good case is written, every bad one
is listed in errors.csv, nothing else is written, and ``python -m monai.bundle run`` exits non-zero."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.reliability.corpus.nifti import vol, write_nifti, write_raw_nifti

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation" / "configs"
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, 2.0, 0, -40.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])
SHAPE = (22, 20, 14)
# a tiny, randomly initialised detector (marked fitted) so the run takes seconds
TINY = {
    "fov": [16, 16, 16],
    "tokenizer_def": {"channels": [8, 16], "num_res_layers": 1, "num_embeddings": 16, "embedding_dim": 8},
    "transformer_def": {"hidden_size": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2, "dropout": 0.0},
    "network_def#grid_size": [4, 4],
    "load_pretrain": False,
    "nll_threshold": 5.0,  # untrained weights have no fitted NLL thresholds: fixed ones
    "nll_grow_threshold": 4.0,
    # mark_fitted() after the core refactor, _set_fitted() before it
    "initialize": [
        "$monai.utils.set_determinism(seed=0)",
        "$(getattr(@network_def, 'mark_fitted', None) or @network_def._set_fitted)()",
    ],
}


#: files written once per run (the run report and thresholds come with the report handler, when configured)
RUN_FILES = {
    "scores.csv",
    "slice_scores.csv",
    "errors.csv",
    "thresholds.json",
    "report.html",
    "open_in_slicer.py",
    "run.json",
}


def _good(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    brain = (zz**2 + yy**2 + xx**2) < 0.8
    nib.save(nib.Nifti1Image(((0.6 + 0.1 * rng.standard_normal(SHAPE)) * brain * 1000).astype(np.int16), AFFINE), path)


def _bad(folder: Path) -> list[str]:
    raw = write_nifti(folder / "tmp.nii.gz").read_bytes()
    (folder / "tmp.nii.gz").unlink()
    (folder / "b1_truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    write_nifti(folder / "b2_fmri.nii.gz", vol((10, 10, 10, 4)))
    nan = vol()
    nan[2, 2, 2] = np.nan
    write_nifti(folder / "b3_nan.nii.gz", nan)
    write_raw_nifti(folder / "b4_zero_spacing.nii.gz", pixdim=(2.0, 0.0, 2.0), codes=(0, 0))
    (folder / "b5_noise.nii.gz").write_bytes(np.random.default_rng(3).bytes(3000))
    return ["b1_truncated", "b2_fmri", "b3_nan", "b4_zero_spacing", "b5_noise"]


@pytest.mark.slow
def test_five_good_five_bad_volumes(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(5):
        _good(scans / f"g{i}.nii.gz", i)
    bad = _bad(scans)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    configs = f"['{CONFIGS / 'inference.yaml'}','{tmp_path / 'tiny.yaml'}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(tmp_path)]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    cmd += ["--dataset_dir", str(scans), "--output_dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MEDOOD_PROGRESS": "0"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode != 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "5 of 10 cases failed" in run.stderr + run.stdout, run.stderr[-3000:]
    assert "GHSA-873f-pvrv-4x83" in run.stderr, "MONAI's warning that configs run code is kept"
    assert "Traceback" not in run.stderr, "a failed batch ends with its lines, no traceback (MEDOOD_DEBUG=1 shows it)"
    failed = [line for line in run.stderr.splitlines() if line.startswith("failed: ")]
    assert [line.split(":")[1].strip() for line in failed] == [
        "b1_truncated",
        "b2_fmri",
        "b3_nan",
        "b4_zero_spacing",
        "b5_noise",
    ]
    assert run.stderr.strip().splitlines()[-2] == f"5 of 10 cases failed and were skipped; see {out / 'errors.csv'}"

    maps = sorted(p.name for p in out.glob("*_anomaly_map.nii.gz"))
    assert maps == [f"g{i}_anomaly_map.nii.gz" for i in range(5)]
    for i in range(5):
        img = nib.load(out / f"g{i}_anomaly_map.nii.gz")
        assert img.shape == SHAPE and np.allclose(img.affine, AFFINE, atol=1e-5)
    errors = list(csv.DictReader(open(out / "errors.csv", encoding="utf-8")))
    assert [r["case"] for r in errors] == bad
    assert all(r["file"].endswith(f"{r['case']}.nii.gz") and r["reason"] and r["stage"] for r in errors)
    assert "4D with 4 volumes" in errors[1]["reason"] and "zero voxel spacing" in errors[3]["reason"]
    scores = list(csv.DictReader(open(out / "scores.csv", encoding="utf-8")))
    assert [r["case"] for r in scores] == [f"g{i}" for i in range(5)]
    names = {p.name for p in out.iterdir()}
    assert {*maps, "scores.csv", "slice_scores.csv", "errors.csv"} <= names
    assert not [n for n in names if any(b in n for b in bad)], "nothing is written for a bad case"
    assert not [n for n in names if n.startswith(".") or ".tmp" in n], "no temporary file is left"
    assert names - set(maps) <= RUN_FILES, f"unexpected outputs: {sorted(names - set(maps) - RUN_FILES)}"
