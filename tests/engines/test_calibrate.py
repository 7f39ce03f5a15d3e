"""``medood calibrate --bundle``: a shipped bundle's thresholds re-recorded from a few ID images, beside the shipped
files (never over them), with the split-conformal rule; refused when the folder is too small for alpha."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medood.cli import main
from medood.detectors.calibration import Calibration
from medood.engines.calibrate import calibrate_bundle
from medood.utils.checkpoints import load_state
from medood.utils.conformal import CalibrationSizeError

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mecam_pathology_ood_classification"


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    shutil.copytree(BUNDLE / "models", bundle / "models")
    ids = tmp_path / "site_id"
    ids.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # pink, stain-like tiny patches
        base = np.array([200, 120, 170]) + rng.normal(0, 25, (32, 32, 3))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(ids / f"patch_{i}.png")
    return bundle, ids


def test_calibrate_writes_beside_and_never_over(site: tuple[Path, Path]) -> None:
    bundle, ids = site
    shipped = _digest(bundle)
    args = ["calibrate", "--bundle", str(bundle), "--id", str(ids), "--alpha", "0.3", "--override", "device=cpu"]
    assert main(args) == 0
    out = bundle / "models" / "site_calibration"
    assert sorted(p.name for p in out.iterdir()) == ["calibration.pt", "id_scores.csv", "thresholds.json"]
    assert {k: v for k, v in _digest(bundle).items() if not k.startswith("models/site_calibration")} == shipped
    record = json.loads((out / "thresholds.json").read_text())
    rule = record["score_rule"]
    assert (rule["rule"], rule["alpha"], rule["n"]) == ("split-conformal", pytest.approx(0.3), 6)
    scores = sorted(float(r["score"]) for r in csv.DictReader(open(out / "id_scores.csv")))
    k = math.ceil(7 * 0.7)  # 5th smallest of 6
    assert record["score_threshold"] == pytest.approx(scores[k - 1], rel=1e-5)
    cal = Calibration()
    load_state(cal, out / "calibration.pt")
    assert cal.thresholds(alpha=0.3).score == pytest.approx(record["score_threshold"])
    assert torch.isfinite(cal.score_values).sum() == 6
    before = (out / "thresholds.json").read_bytes()
    assert main(args) == 2  # a second run may not replace the site thresholds (one-line error)
    with pytest.raises(FileExistsError, match="never overwritten"):
        calibrate_bundle(bundle, ids, alpha=0.3)
    assert (out / "thresholds.json").read_bytes() == before


def test_calibrate_refuses_too_few_scans(site: tuple[Path, Path]) -> None:
    bundle, ids = site
    assert main(["calibrate", "--bundle", str(bundle), "--id", str(ids), "--alpha", "0.05"]) == 2
    with pytest.raises(CalibrationSizeError, match=r"6 in-distribution scans in .* at least 19"):
        calibrate_bundle(bundle, ids, alpha=0.05)
    assert not (bundle / "models" / "site_calibration").exists()
