"""The MECAM bundles' outputs on the runs of their declared workflows (configs/workflows.yaml: train -> infer ->
evaluate with the exit ablation -> calibrate, on 2D class-folder PNGs, a MedMNIST-style .npz and 3D NIfTI volumes of
three contrasts; tests/bundles/test_bundles.py checks every bundle's properties, outputs and export)."""

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

from medood.metrics.tables import METRICS
from tests.helpers.brain_volumes import AFFINE, SHAPE
from tests.helpers.bundles import BundleRun


def _check_results(out: Path, sets: set[str], columns: set[str], n_id: int) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["fpr95_convention"] == "fraction of OOD accepted when 95% of ID is accepted"
    assert set(results["results"]) == sets
    assert results["n_id_test"] == n_id
    for table in results["results"].values():
        assert set(table) == columns
        for metrics in table.values():
            assert set(metrics) == set(METRICS)
            assert all(math.isfinite(v) and 0 <= v <= 1 for v in metrics.values())
    return results


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bundle", "exits"), [("mecam_dermoscopy_ood_classification", "03"), ("mecam_pathology_ood_classification", "01")]
)
def test_2d_train_evaluate_ablation_and_inference(
    bundle: str, exits: str, bundle_run: Callable[[str], BundleRun], tmp_path: Path
) -> None:
    run = bundle_run(bundle)
    weights = _weights(run.snapshot("train"))
    assert bool(weights["_fitted"])
    assert weights["net.exits.3.weight"].dtype == torch.float16, "train.yaml stores half-precision weights"
    assert weights["calibration.score_quantiles"].dtype == torch.float32
    assert torch.isfinite(weights["calibration.score_quantiles"]).all(), "ID validation scores recorded"
    assert int(weights["calibration.n_map_values"]) == 0, "no mask threshold from an explanation map"

    out = run.output("evaluate")  # with exit_subsets ['3', '23', '0123', <the bundle's exits>]
    sets = {"ood_near/blue_dye", "ood_near/instrument", "ood_far/grey", "ood_far/xray"}
    res = _check_results(out, sets, {"mecam", "exits_3", "exits_23", "exits_0123", f"exits_{exits}"}, 9)
    for table in res["results"].values():  # the bundle's exits (and feature change): the same scores as that subset
        assert table["mecam"] == pytest.approx(table[f"exits_{exits}"])
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 9 + 12
    assert {r["label"] for r in rows} == {"0", "1"}
    assert {r["flagged"] for r in rows} == {""}, "9 healthy validation images cannot give a 5 % flag: refused, blank"
    overlay = next(out.glob("*_cam_overlay.png"))
    assert np.asarray(Image.open(overlay)).shape == (20, 20, 3), "the CAM overlay is on the input's own grid"
    assert len(list(out.glob("*_cam_map.nii.gz"))) == 21
    assert not list(out.glob("*_seg.nii.gz"))

    assert len(list(csv.DictReader(open(run.output("infer") / "scores.csv")))) == 9, "inference: the test split"
    out = tmp_path / "infer"  # plain inference on a folder of images (no split sub-folder): scores, no table
    data = Path(run.overrides()["dataset_dir"])
    run.extra(["inference.yaml"], "infer", dataset_dir=str(data / "ood_far"), output_dir=str(out))
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 6
    assert all(math.isfinite(float(r["score"])) for r in rows)
    assert not (out / "results.json").exists()


@pytest.mark.slow
def test_pathology_reads_medmnist_npz(bundle_run: Callable[[str], BundleRun]) -> None:
    """npz.yaml: a PathMNIST-style .npz (12 x 12 here) trains, selects, calibrates and is evaluated against another
    MedMNIST file; cases are named after the file, overlays keep the file's resolution."""
    run = bundle_run("mecam_pathology_ood_classification")
    assert torch.isfinite(_weights(run.snapshot("train_npz"))["calibration.score_quantiles"]).all()
    out = run.output("evaluate_npz")
    _check_results(out, {"otherset"}, {"mecam"}, 12)
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert rows[0]["case"] == "pathmnist_test_000000"
    assert rows[-1]["case"] == "otherset_test_000005"
    overlay = np.asarray(Image.open(out / "pathmnist_test_000000_cam_overlay.png"))
    assert overlay.shape == (12, 12, 3)
    assert overlay.std() > 0, "the overlay is drawn on the image, not on a blank background"


@pytest.mark.slow
def test_3d_train_evaluate_and_inference(bundle_run: Callable[[str], BundleRun], tmp_path: Path) -> None:
    import nibabel as nib

    run = bundle_run("mecam_brain_mri_ood_classification")
    weights = _weights(run.snapshot("train"))
    assert bool(weights["_fitted"])
    assert weights["net.conv1.weight"].ndim == 5
    assert torch.isfinite(weights["calibration.score_quantiles"]).all()
    # calibrate.yaml: the ID validation quantiles re-recorded with another scoring setting (the CAMs fused on the
    # input grid instead of the bundle's CAM grid: other scores, so other quantiles)
    again = _weights(run.snapshot("calibrate"))
    assert bool(again["_fitted"])
    assert not torch.equal(again["calibration.score_quantiles"], weights["calibration.score_quantiles"])
    torch.testing.assert_close(again["net.conv1.weight"], weights["net.conv1.weight"])

    out = run.output("evaluate")  # with exit_subsets all
    res = _check_results(out, {"heavy_noise", "wrong_contrast_pd"}, {"mecam"} | {f"exits_{s}" for s in (
        "0", "1", "2", "3", "01", "02", "03", "12", "13", "23", "012", "013", "023", "123", "0123")}, 6)  # fmt: skip
    assert res["ood_set_sizes"] == {"heavy_noise": 3, "wrong_contrast_pd": 1}, "ood_slots: the T1w slot only"
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["case"] for r in rows[:3]] == ["tes-0_T1w", "tes-0_T2w", "tes-0_FLAIR"]
    assert len(rows) == 6 + 4
    cam = nib.load(str(out / "tes-0_T2w_cam_map.nii.gz"))
    assert cam.shape == SHAPE, "the CAM is written on the input's grid"
    np.testing.assert_allclose(cam.affine, AFFINE, atol=1e-4)
    values = np.asarray(cam.dataobj)
    assert values.min() >= -1e-6
    assert values.max() <= 1 + 1e-6

    assert len(list(csv.DictReader(open(run.output("infer") / "scores.csv")))) == 6, "3 contrasts x 2 test subjects"
    out = tmp_path / "infer"  # a plain folder of volumes (no dataset.json)
    data = Path(run.overrides()["dataset_dir"])
    run.extra(["inference.yaml"], "infer", dataset_dir=str(data / "ood"), output_dir=str(out))
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 6
    assert all(math.isfinite(float(r["score"])) for r in rows)
