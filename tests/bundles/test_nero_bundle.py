"""The NERO endoscopy bundle's outputs on the run of its declared workflows (configs/workflows.yaml: train -> fit ->
infer -> evaluate on tiny class-folder PNGs; tests/bundles/test_bundles.py checks every bundle's properties, outputs
and export), and inference on a plain folder of images."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from medood.detectors import get_detector_class, list_detectors
from medood.detectors.base_posthoc import ClassifierDetector
from medood.handlers import FailedCasesError
from medood.metrics.tables import METRICS
from tests.helpers.bundles import BundleRun
from tests.helpers.class_folders import CLASSES, write_pngs

NAME = "nero_endoscopy_ood_classification"


def test_train_fit_evaluate_and_inference(bundle_run: Callable[[str], BundleRun], tmp_path: Path) -> None:
    run = bundle_run(NAME)
    weights = torch.load(run.snapshot("train") / "model.pt", weights_only=True)
    assert weights["fc.weight"].dtype == torch.float16, "train.yaml stores half-precision weights"

    fitted = torch.load(run.snapshot("fit") / "detectors.pt", weights_only=True)
    expected = {  # every post-hoc detector on a classifier (feature-map detectors such as spectral are not)
        n
        for n in list_detectors(requires_training=False, produces_map=False)
        if issubclass(get_detector_class(n), ClassifierDetector)
    }
    assert set(fitted) == expected
    assert {int(state["calibration.n_scores"]) for state in fitted.values()} == {9}, "calibrated on the 9 ID val images"

    out = run.output("evaluate")
    results = json.loads((out / "results.json").read_text())
    assert results["fpr95_convention"] == "fraction of OOD accepted when 95% of ID is accepted"
    sets = {"ood_near/blue_dye", "ood_near/instrument", "ood_far/grey", "ood_far/xray"}
    assert set(results["results"]) == sets
    assert results["ood_set_sizes"] == dict.fromkeys(sorted(sets), 3)
    for table in results["results"].values():
        assert set(table) == expected, "every post-hoc detector is in the table"
        for metrics in table.values():
            assert set(metrics) == set(METRICS)
            assert all(math.isfinite(v) and 0 <= v <= 1 for v in metrics.values())
    assert 0.0 <= results["id_test_accuracy"] <= 1.0
    assert results["n_id_test"] == 9
    assert "FPR95" in (out / "results.md").read_text()
    rows = list(csv.DictReader(open(out / "nero" / "scores.csv")))
    assert len(rows) == 9 + 12
    assert {r["label"] for r in rows} == {"0", "1"}
    assert not (run.output("infer") / "results.json").exists(), "no OOD labels: no table"

    plain = tmp_path / "plain" / "nested"  # a plain folder of images (no split folder): inference scores all
    write_pngs(plain, 2, (200, 90, 90), np.random.default_rng(1))
    out = tmp_path / "infer"
    run.extra(["inference.yaml"], "infer", dataset_dir=str(tmp_path / "plain"), output_dir=str(out))
    for name in expected:
        rows = list(csv.DictReader(open(out / name / "scores.csv")))
        assert [r["case"] for r in rows] == ["nested/img_00", "nested/img_01"]
        assert all(math.isfinite(float(r["score"])) for r in rows)
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert {p["pred_class"] for p in preds} <= set(CLASSES)
    assert not (out / "results.json").exists(), "no OOD labels: no table"


def test_training_leaves_bad_files_out_lists_them_and_fails(
    bundle_run: Callable[[str], BundleRun], tmp_path: Path
) -> None:
    """A truncated PNG and a text file among the training images: the classifier trains on the good ones, saves its
    weights, errors_train.csv names both, and the run ends with FailedCasesError (exit status 1)."""
    run = bundle_run(NAME)
    data = tmp_path / "data"
    shutil.copytree(run.overrides()["dataset_dir"], data)
    cls = sorted(p for p in (data / "train").iterdir() if p.is_dir())[0]
    good = sorted(cls.glob("*.png"))[0]
    (cls / "zz_truncated.png").write_bytes(good.read_bytes()[:40])
    (cls / "zz_text.png").write_text("not an image")
    root = tmp_path / "root"
    shutil.copytree(run.root / "models", root / "models")
    out, before = tmp_path / "out", (root / "models" / "model.pt").stat().st_mtime_ns
    with pytest.raises(Exception) as err:
        run.extra(["inference.yaml", "train.yaml"], "train", root=root, dataset_dir=str(data), output_dir=str(out))
    assert isinstance(err.value.__cause__, FailedCasesError) or "FailedCasesError" in repr(err.value)
    rows = list(csv.DictReader(open(out / "errors_train.csv")))
    assert sorted(Path(r["file"]).name for r in rows) == ["zz_text.png", "zz_truncated.png"]
    assert (root / "models" / "model.pt").stat().st_mtime_ns > before, "the weights were saved before the failure"
