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
