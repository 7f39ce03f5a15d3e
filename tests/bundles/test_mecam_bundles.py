"""The MECAM bundles (train -> evaluate with the exit ablation, and inference) through MONAI's ConfigWorkflow on tiny
synthetic data written by the test: 2D class-folder PNGs (dermoscopy, pathology) and 3D NIfTI volumes of three
contrasts (brain MRI), with check_properties() clean."""

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

from medood.metrics.tables import METRICS
from tests.helpers.brain_volumes import AFFINE, SHAPE, write_brain_dataset
from tests.helpers.class_folders import CLASSES, make_class_folders, one_thread

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
TINY_NET = {"layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "stem_kernel": 3, "stem_stride": 1, "max_pool": False}
TINY_2D = {"image_size": 16, "epochs": 2, "batch_size": 8, "cutout_size": 3, "class_names": CLASSES,
           **{f"network_args#{k}": v for k, v in TINY_NET.items()}}  # fmt: skip


def _run(bundle: str, configs: list[str], kind: str, root: Path, data: Path, **extra: object) -> ConfigWorkflow:
    cfg = BUNDLES / bundle / "configs"
    wf = ConfigWorkflow(
        config_file=[str(cfg / c) for c in configs],
        meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"),
        workflow_type=kind,
        bundle_root=str(root),
        dataset_dir=str(data),
        **extra,
    )
    wf.initialize()
    assert wf.check_properties() in (None, []), wf.check_properties()
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


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


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["mecam_dermoscopy_ood_classification", "mecam_pathology_ood_classification"])
def test_2d_train_evaluate_ablation_and_inference(tmp_path: Path, bundle: str) -> None:
    data = make_class_folders(tmp_path / "data")
    root = tmp_path / "bundle"
    _run(bundle, ["inference.yaml", "train.yaml"], "train", root, data, **TINY_2D)
    weights = torch.load(root / "models" / "model.pt", weights_only=True)["model"]
    assert bool(weights["_fitted"])
    assert weights["net.exits.3.weight"].dtype == torch.float16, "train.yaml stores half-precision weights"
    assert weights["calibration.score_quantiles"].dtype == torch.float32
    assert torch.isfinite(weights["calibration.score_quantiles"]).all(), "ID validation scores recorded"
    assert int(weights["calibration.n_map_values"]) == 0, "no mask threshold from an explanation map"

    out = tmp_path / "evaluate"
    _run(bundle, ["inference.yaml", "evaluate.yaml"], "infer", root, data, output_dir=str(out),
         exit_subsets=["3", "23", "0123"], **TINY_2D)  # fmt: skip
    sets = {"ood_near/blue_dye", "ood_near/instrument", "ood_far/grey", "ood_far/xray"}
    res = _check_results(out, sets, {"mecam", "exits_3", "exits_23", "exits_0123"}, 9)
    for table in res["results"].values():  # the bundle's exits are all four: the same scores as exits_0123
        assert table["mecam"] == pytest.approx(table["exits_0123"])
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 9 + 12
    assert {r["label"] for r in rows} == {"0", "1"}
    assert {r["flagged"] for r in rows} <= {"0", "1"}
    overlay = next(out.glob("*_cam_overlay.png"))
    assert np.asarray(Image.open(overlay)).shape == (20, 20, 3), "the CAM overlay is on the input's own grid"
    assert len(list(out.glob("*_cam_map.nii.gz"))) == 21
    assert not list(out.glob("*_seg.nii.gz"))

    out = tmp_path / "infer"  # plain inference on a folder of images: scores, no table
    _run(bundle, ["inference.yaml"], "infer", root, data / "ood_far", output_dir=str(out), **TINY_2D)
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 6
    assert all(math.isfinite(float(r["score"])) for r in rows)
    assert not (out / "results.json").exists()


def _npz(path: Path, colours: list[tuple[int, int, int]], n: int, size: int = 12) -> Path:
    rng = np.random.default_rng(len(colours))
    arrays = {}
    for split in ("train", "val", "test"):
        labels = np.arange(n) % len(colours)
        imgs = np.stack([np.clip(np.array(colours[k]) + rng.normal(0, 20, (size, size, 3)), 0, 255) for k in labels])
        arrays[f"{split}_images"] = imgs.astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.slow
def test_pathology_reads_medmnist_npz(tmp_path: Path) -> None:
    """npz.yaml: a PathMNIST-style .npz (12 x 12 here) trains, selects, calibrates and is evaluated against another
    MedMNIST file; cases are named after the file, overlays keep the file's resolution."""
    bundle = "mecam_pathology_ood_classification"
    ood = _npz(tmp_path / "otherset.npz", [(20, 20, 20)], 6)
    _npz(tmp_path / "pathmnist.npz", [(200, 90, 90), (150, 60, 40), (230, 220, 200)], 12)
    root = tmp_path / "bundle"
    tiny = {**TINY_2D, "class_names": ["a", "b", "c"]}
    _run(bundle, ["inference.yaml", "train.yaml", "npz.yaml", "npz_train.yaml"], "train", root, tmp_path, **tiny)
    assert torch.isfinite(torch.load(root / "models" / "model.pt", weights_only=True)["model"]["calibration.score_quantiles"]).all()
    out = tmp_path / "evaluate"
    _run(bundle, ["inference.yaml", "evaluate.yaml", "npz.yaml"], "infer", root, tmp_path, output_dir=str(out),
         ood_npz=[str(ood)], **tiny)  # fmt: skip
    _check_results(out, {"otherset"}, {"mecam"}, 12)
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert rows[0]["case"] == "pathmnist_test_000000"
    assert rows[-1]["case"] == "otherset_test_000005"
    overlay = np.asarray(Image.open(out / "pathmnist_test_000000_cam_overlay.png"))
    assert overlay.shape == (12, 12, 3)
    assert overlay.std() > 0, "the overlay is drawn on the image, not on a blank background"


TINY_3D = {"fov": [12, 12, 12], "pixdim": [2.0, 2.0, 2.0], "epochs": 2, "batch_size": 4, "cutout_size": 3,
           **{f"network_args#{k}": v for k, v in {**TINY_NET, "stem_stride": 2}.items()}}  # fmt: skip


@pytest.fixture(scope="module")
def brain_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_brain_dataset(tmp_path_factory.mktemp("brain"))


@pytest.mark.slow
def test_3d_train_evaluate_and_inference(tmp_path: Path, brain_data: Path) -> None:
    import nibabel as nib

    bundle = "mecam_brain_mri_ood_classification"
    root = tmp_path / "bundle"
    _run(bundle, ["inference.yaml", "train.yaml"], "train", root, brain_data, **TINY_3D)
    weights = torch.load(root / "models" / "model.pt", weights_only=True)["model"]
    assert bool(weights["_fitted"])
    assert weights["net.conv1.weight"].ndim == 5
    assert torch.isfinite(weights["calibration.score_quantiles"]).all()
    # calibrate.yaml: the ID validation quantiles re-recorded with another scoring setting (the CAMs fused on the
    # input grid instead of the bundle's CAM grid: other scores, so other quantiles)
    _run(bundle, ["inference.yaml", "train.yaml", "calibrate.yaml"], "train", root, brain_data, cam_grid="input",
         **TINY_3D)  # fmt: skip
    again = torch.load(root / "models" / "model.pt", weights_only=True)["model"]
    assert bool(again["_fitted"])
    assert not torch.equal(again["calibration.score_quantiles"], weights["calibration.score_quantiles"])
    torch.testing.assert_close(again["net.conv1.weight"], weights["net.conv1.weight"])

    out = tmp_path / "evaluate"
    _run(bundle, ["inference.yaml", "evaluate.yaml"], "infer", root, brain_data, output_dir=str(out),
         exit_subsets="all", **TINY_3D)  # fmt: skip
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

    out = tmp_path / "infer"  # a plain folder of volumes
    _run(bundle, ["inference.yaml"], "infer", root, brain_data / "ood", output_dir=str(out), **TINY_3D)
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 6
    assert all(math.isfinite(float(r["score"])) for r in rows)
