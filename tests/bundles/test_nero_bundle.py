"""The NERO endoscopy bundle (train -> fit -> evaluate, and inference) through MONAI's ConfigWorkflow on tiny
class-folder PNGs written by the test, with check_properties() clean."""

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

from medood.detectors import list_detectors
from medood.metrics.tables import METRICS
from tests.helpers.class_folders import CLASSES, SMALL_FIT, make_class_folders, one_thread, write_pngs

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "nero_endoscopy_ood_classification"
CONFIGS = BUNDLE / "configs"

TINY = {"image_size": 16, "epochs": 1, "batch_size": 8, "detector_args": SMALL_FIT}


def _run(configs: list[str], kind: str, bundle_root: Path, data: Path, **extra: object) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=kind,
        bundle_root=str(bundle_root),
        dataset_dir=str(data),
        **{**TINY, **extra},
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


def test_train_fit_evaluate_and_inference(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data")
    root = tmp_path / "bundle"
    _run(["inference.yaml", "train.yaml"], "train", root, data)
    weights = torch.load(root / "models" / "model.pt", weights_only=True)
    assert weights["fc.weight"].dtype == torch.float16, "train.yaml stores half-precision weights"

    _run(["inference.yaml", "fit.yaml"], "infer", root, data)
    fitted = torch.load(root / "models" / "detectors.pt", weights_only=True)
    expected = set(list_detectors(requires_training=False, produces_map=False))  # every post-hoc detector
    assert set(fitted) == expected

    out = tmp_path / "evaluate"
    _run(["inference.yaml", "evaluate.yaml"], "infer", root, data, output_dir=str(out))
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

    plain = tmp_path / "plain" / "nested"  # a plain folder of images (no split folder): inference scores all
    write_pngs(plain, 2, (200, 90, 90), np.random.default_rng(1))
    out = tmp_path / "infer"
    _run(["inference.yaml"], "infer", root, tmp_path / "plain", output_dir=str(out))
    for name in expected:
        rows = list(csv.DictReader(open(out / name / "scores.csv")))
        assert [r["case"] for r in rows] == ["nested/img_00", "nested/img_01"]
        assert all(math.isfinite(float(r["score"])) for r in rows)
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert {p["pred_class"] for p in preds} <= set(CLASSES)
    assert not (out / "results.json").exists(), "no OOD labels: no table"
