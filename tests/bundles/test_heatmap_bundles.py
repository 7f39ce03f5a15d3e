"""The heatmap bundles through MONAI's ConfigWorkflow on tiny data written by the test, check_properties() clean:
2D pathology (train classifier -> train decoder -> evaluate -> inference on a plain folder), 2D endoscopy (the NERO
bundle's shipped classifier reused -> train decoder -> evaluate) and 3D brain MRI (the MECAM bundle's shipped
multi-exit classifier reused -> train decoder -> evaluate -> inference on a plain folder)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from medood.data.errors import DataError
from medood.data.image2d import read_map_nifti_2d
from medood.metrics.tables import METRICS
from tests.helpers.class_folders import CLASSES, make_class_folders, one_thread

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NERO_CLASSIFIER = BUNDLES / "nero_endoscopy_ood_classification" / "models" / "model.pt"
MECAM_CLASSIFIER = BUNDLES / "mecam_brain_mri_ood_classification" / "models" / "model.pt"
TINY_2D = {
    "image_size": 16,
    "batch_size": 8,
    "class_names": CLASSES,
    "decoder_def": {"base_channels": 4, "max_channels": 8, "scale": 1},
    "epochs": 2,
    "train_batch_size": 8,
}
OOD_SETS = {"ood_near/blue_dye", "ood_near/instrument", "ood_far/grey", "ood_far/xray"}


def _run(bundle: str, configs: list[str], kind: str, root: Path, data: Path, **extra: object) -> ConfigWorkflow:
    cfg = BUNDLES / bundle / "configs"
    wf = ConfigWorkflow(
        config_file=[str(cfg / c) for c in configs], meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"), workflow_type=kind, bundle_root=str(root), dataset_dir=str(data),
        **extra,
    )  # fmt: skip
    wf.initialize()
    assert wf.check_properties() in (None, []), wf.check_properties()
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _check_results(out: Path, n_id: int) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["fpr95_convention"] == "fraction of OOD accepted when 95% of ID is accepted"
    assert results["detectors"] == ["heatmap"] and results["n_id_test"] == n_id
    for table in results["results"].values():
        assert set(table["heatmap"]) == set(METRICS)
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in table["heatmap"].values())
    return results


@pytest.mark.slow
def test_pathology_bundle_2d(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data")
    other = make_class_folders(tmp_path / "other_organ")
    root, name = tmp_path / "bundle", "heatmap_pathology_ood_classification"
    _run(name, ["inference.yaml", "train_classifier.yaml"], "train", root, data, **TINY_2D, classifier_epochs=1)
    assert (root / "models" / "classifier.pt").is_file()
    with pytest.raises(RuntimeError) as err:  # an evaluation OOD folder is refused as auxiliary data
        _run(name, ["inference.yaml", "train.yaml"], "train", root, data, **TINY_2D, aux_dirs=[str(data / "ood_far")])
    assert isinstance(err.value.__cause__, DataError) or "evaluation folder" in repr(err.value.__cause__)
    _run(name, ["inference.yaml", "train.yaml"], "train", root, data, **TINY_2D, aux_dirs=[str(other / "train")])
    state = torch.load(root / "models" / "model.pt", weights_only=True)["model"]
    assert bool(state["_fitted"]) and float(state["feature_max"]) > 0
    assert int(state["calibration.n_scores"]) == 9, "calibrated on the 9 ID validation images"
    assert torch.isfinite(state["calibration.map_quantiles"]).all()

    out = tmp_path / "evaluate"
    _run(name, ["inference.yaml", "evaluate.yaml"], "infer", root, data, **TINY_2D, output_dir=str(out))
    results = _check_results(out, 9)
    assert set(results["results"]) == OOD_SETS
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 9 + 12 and {r["label"] for r in rows} == {"0", "1"}
    assert {r["flagged"] for r in rows} <= {"0", "1"}
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
    _run(name, ["inference.yaml"], "infer", root, plain, **TINY_2D, output_dir=str(out2))
    rows = list(csv.DictReader(open(out2 / "scores.csv")))
    assert [r["case"] for r in rows] == ["x0", "x1"] and "label" not in rows[0]
    assert read_map_nifti_2d(out2 / "x1_anomaly_map.nii.gz").shape == (24, 30)


@pytest.mark.slow
def test_endoscopy_bundle_reuses_the_nero_classifier(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data")
    other = make_class_folders(tmp_path / "other_organ")
    root, name = tmp_path / "bundle", "heatmap_endoscopy_ood_classification"
    extra = {**TINY_2D, "classifier_path": str(NERO_CLASSIFIER), "aux_dirs": [str(other / "train")]}
    before = NERO_CLASSIFIER.read_bytes()
    _run(name, ["inference.yaml", "train.yaml"], "train", root, data, **extra)
    assert NERO_CLASSIFIER.read_bytes() == before, "the reused classifier is never written"
    out = tmp_path / "evaluate"
    _run(name, ["inference.yaml", "evaluate.yaml"], "infer", root, data, **extra, output_dir=str(out))
    assert set(_check_results(out, 9)["results"]) == OOD_SETS


TINY_3D = {
    "fov": [12, 12, 12],
    "pixdim": [2.0, 2.0, 2.0],
    "batch_size": 4,
    "train_batch_size": 4,
    "epochs": 2,
    "classifier_epochs": 1,
    "decoder_def": {"base_channels": 2, "max_channels": 4, "scale": 2},
}


@pytest.mark.slow
def test_brain_mri_bundle_3d(tmp_path: Path) -> None:
    import nibabel as nib

    from tests.helpers.brain_volumes import AFFINE, SHAPE, write_brain_dataset

    data = write_brain_dataset(tmp_path / "brain")
    root, name = tmp_path / "bundle", "heatmap_brain_mri_ood_classification"
    _run(name, ["inference.yaml", "train_classifier.yaml"], "train", root, data, **TINY_3D)
    _run(name, ["inference.yaml", "train.yaml"], "train", root, data, **TINY_3D)
    state = torch.load(root / "models" / "model.pt", weights_only=True)["model"]
    assert bool(state["_fitted"]) and state["decoder.fc.weight"].shape[1] == 64 + 3  # D = 64 features + 3 classes
    assert int(state["calibration.n_scores"]) == 6, "calibrated on the 2 x 3 validation volumes"

    out = tmp_path / "evaluate"
    _run(name, ["inference.yaml", "evaluate.yaml"], "infer", root, data, **TINY_3D, output_dir=str(out))
    results = _check_results(out, 6)
    assert results["ood_set_sizes"] == {"heavy_noise": 3, "wrong_contrast_pd": 1}, "ood_slots: the T1w slot only"
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["case"] for r in rows[:3]] == ["tes-0_T1w", "tes-0_T2w", "tes-0_FLAIR"] and len(rows) == 6 + 4
    img = nib.load(str(out / "ood-1_T1w_anomaly_map.nii.gz"))
    assert img.shape == SHAPE, "the map is written on the input's grid (Invertd), not the 12^3 field of view"
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-4)
    assert np.asarray(img.dataobj).min() >= 0

    out2 = tmp_path / "infer"  # a plain folder of volumes
    _run(name, ["inference.yaml"], "infer", root, data / "ood", **TINY_3D, output_dir=str(out2))
    assert len(list(csv.DictReader(open(out2 / "scores.csv")))) == 6


@pytest.mark.slow
def test_brain_mri_bundle_reuses_the_mecam_classifier(tmp_path: Path) -> None:
    from tests.helpers.brain_volumes import write_brain_dataset

    data = write_brain_dataset(tmp_path / "brain")
    root, name = tmp_path / "bundle", "heatmap_brain_mri_ood_classification"
    extra = {**TINY_3D, "classifier_path": str(MECAM_CLASSIFIER)}
    before = MECAM_CLASSIFIER.read_bytes()
    _run(name, ["inference.yaml", "mecam_classifier.yaml", "train.yaml"], "train", root, data, **extra)
    assert MECAM_CLASSIFIER.read_bytes() == before, "the reused classifier is never written"
    state = torch.load(root / "models" / "model_mecam.pt", weights_only=True)["model"]
    mecam = torch.load(MECAM_CLASSIFIER, weights_only=True)["model"]
    torch.testing.assert_close(state["head_weight"], mecam["net.exits.3.weight"].float().flatten(1))  # final exit
    assert bool(state["_fitted"]) and state["decoder.fc.weight"].shape[1] == 64 + 3
    out = tmp_path / "evaluate"
    cfgs = ["inference.yaml", "mecam_classifier.yaml", "evaluate.yaml"]
    _run(name, cfgs, "infer", root, data, **extra, output_dir=str(out))
    assert _check_results(out, 6)["ood_set_sizes"] == {"heavy_noise": 3, "wrong_contrast_pd": 1}
