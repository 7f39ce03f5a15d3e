"""The heatmap bundles' outputs on the runs of their declared workflows (configs/workflows.yaml; tests/bundles/
test_bundles.py checks every bundle's properties, outputs and export): 2D pathology (train classifier -> train
decoder -> evaluate, inference on a plain folder), 2D endoscopy (the NERO bundle's shipped classifier reused) and
3D brain MRI (own classifier, or the MECAM bundle's shipped multi-exit classifier reused)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medood.data.errors import DataError
from medood.data.image2d import read_map_nifti_2d
from medood.metrics.tables import METRICS
from tests.helpers.brain_volumes import AFFINE, SHAPE
from tests.helpers.bundles import BUNDLES, BundleRun

MECAM_CLASSIFIER = BUNDLES / "mecam_brain_mri_ood_classification" / "models" / "model.pt"
OOD_SETS = {"ood_near/blue_dye", "ood_near/instrument", "ood_far/grey", "ood_far/xray"}


def _check_results(out: Path, n_id: int) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["fpr95_convention"] == "fraction of OOD accepted when 95% of ID is accepted"
    assert results["detectors"] == ["heatmap"] and results["n_id_test"] == n_id
    for table in results["results"].values():
        assert set(table["heatmap"]) == set(METRICS)
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in table["heatmap"].values())
    return results


def _state(folder: Path, name: str = "model.pt") -> dict[str, torch.Tensor]:
    return torch.load(folder / name, weights_only=True)["model"]


@pytest.mark.slow
def test_pathology_bundle_2d(bundle_run: Callable[[str], BundleRun], tmp_path: Path) -> None:
    run = bundle_run("heatmap_pathology_ood_classification")
    data = Path(run.overrides()["dataset_dir"])
    with pytest.raises(RuntimeError) as err:  # an evaluation OOD folder is refused as auxiliary data
        run.extra(["inference.yaml", "train.yaml"], "train", root=tmp_path / "refused", aux_dirs=[str(data / "ood_far")],
                  classifier_path=str(run.root / "models" / "classifier.pt"))  # fmt: skip
    assert isinstance(err.value.__cause__, DataError) or "evaluation folder" in repr(err.value.__cause__)
    state = _state(run.snapshot("train"))
    assert bool(state["_fitted"]) and float(state["feature_max"]) > 0
    assert int(state["calibration.n_scores"]) == 9, "calibrated on the 9 ID validation images"
    assert torch.isfinite(state["calibration.map_quantiles"]).all()

    out = run.output("evaluate")
    results = _check_results(out, 9)
    assert set(results["results"]) == OOD_SETS
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 9 + 12 and {r["label"] for r in rows} == {"0", "1"}
    assert {r["flagged"] for r in rows} == {""}, "9 healthy validation images cannot give a 5 % flag: refused, blank"
    amap = read_map_nifti_2d(out / f"{rows[0]['case']}_anomaly_map.nii.gz")
    assert amap.shape == (20, 20), "the map is back on the 20 x 20 image grid (Invertd), not the 16 x 16 input"
    overlay = np.asarray(Image.open(out / f"{rows[0]['case']}_anomaly_overlay.png"))
    assert overlay.shape == (20, 20, 3)
    scores = {r["case"]: float(r["score"]) for r in rows}
    # the image score is the mean of the map on the classifier's grid; the map written is its resampled copy
    assert abs(float(amap.mean()) - scores[rows[0]["case"]]) < 0.1 * scores[rows[0]["case"]] + 1e-6

    plain = tmp_path / "plain"  # inference on any folder of images (no labels)
    plain.mkdir()
    for i in range(2):
        Image.fromarray(np.full((24, 30, 3), 60 * i, np.uint8)).save(plain / f"x{i}.png")
    out2 = tmp_path / "infer"
    run.extra(["inference.yaml"], "infer", dataset_dir=str(plain), output_dir=str(out2))
    rows = list(csv.DictReader(open(out2 / "scores.csv")))
    assert [r["case"] for r in rows] == ["x0", "x1"] and "label" not in rows[0]
    assert read_map_nifti_2d(out2 / "x1_anomaly_map.nii.gz").shape == (24, 30)


@pytest.mark.slow
def test_endoscopy_bundle_reuses_the_nero_classifier(bundle_run: Callable[[str], BundleRun]) -> None:
    """(The NERO bundle's shipped files are left unchanged: checked by the run itself.)"""
    run = bundle_run("heatmap_endoscopy_ood_classification")
    assert run.spec["reuses"] == ["nero_endoscopy_ood_classification"]
    assert set(_check_results(run.output("evaluate"), 9)["results"]) == OOD_SETS


@pytest.mark.slow
def test_brain_mri_bundle_3d(bundle_run: Callable[[str], BundleRun], tmp_path: Path) -> None:
    import nibabel as nib

    run = bundle_run("heatmap_brain_mri_ood_classification")
    state = _state(run.snapshot("train"))
    assert bool(state["_fitted"]) and state["decoder.fc.weight"].shape[1] == 64 + 3  # D = 64 features + 3 classes
    assert int(state["calibration.n_scores"]) == 6, "calibrated on the 2 x 3 validation volumes"

    out = run.output("evaluate")
    results = _check_results(out, 6)
    assert results["ood_set_sizes"] == {"heavy_noise": 3, "wrong_contrast_pd": 1}, "ood_slots: the T1w slot only"
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["case"] for r in rows[:3]] == ["tes-0_T1w", "tes-0_T2w", "tes-0_FLAIR"] and len(rows) == 6 + 4
    img = nib.load(str(out / "ood-1_T1w_anomaly_map.nii.gz"))
    assert img.shape == SHAPE, "the map is written on the input's grid (Invertd), not the 12^3 field of view"
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-4)
    assert np.asarray(img.dataobj).min() >= 0

    out2 = tmp_path / "infer"  # a plain folder of volumes (no dataset.json)
    run.extra(["inference.yaml"], "infer", dataset_dir=str(Path(run.overrides()["dataset_dir"]) / "ood"),
              output_dir=str(out2))  # fmt: skip
    assert len(list(csv.DictReader(open(out2 / "scores.csv")))) == 6


@pytest.mark.slow
def test_brain_mri_bundle_reuses_the_mecam_classifier(bundle_run: Callable[[str], BundleRun]) -> None:
    run = bundle_run("heatmap_brain_mri_ood_classification")
    state = _state(run.snapshot("train_mecam"), "model_mecam.pt")
    mecam = torch.load(MECAM_CLASSIFIER, weights_only=True)["model"]
    torch.testing.assert_close(state["head_weight"], mecam["net.exits.3.weight"].float().flatten(1))  # final exit
    assert bool(state["_fitted"]) and state["decoder.fc.weight"].shape[1] == 64 + 3
    assert _check_results(run.output("evaluate_mecam"), 6)["ood_set_sizes"] == {"heavy_noise": 3, "wrong_contrast_pd": 1}
