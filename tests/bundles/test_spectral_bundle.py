"""The spectral brain bundle through MONAI's ConfigWorkflow on a tiny demo set: train -> fit -> inference ->
evaluate -> calibration report; and the shipped host + detector weights."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from medood.data.demo import build_demo
from medood.data.demo.tissue import write_tissue_labels
from medood.utils.checkpoints import load_state
from tests.helpers.class_folders import one_thread

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "spectral_brain_mri_ood_classification"
CONFIGS = BUNDLE / "configs"
TINY = {"pixdim": 10.0, "fov": [16, 24, 16], "epochs": 1, "brain_batch_size": 2, "pathology_batch_size": 4}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _run(configs: list[str], root: Path, data: Path, **extra: object) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer", bundle_root=str(root),
        dataset_dir=str(data / "brain_mri"), pathology_dir=str(data / "pathology"), **{**TINY, **extra},
    )  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


@pytest.mark.slow
def test_train_fit_infer_evaluate_calibrate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_demo(data, only=["brain_mri"], n_train=2, n_val=1, n_test=2, n_ood=3)
    build_demo(data, only=["pathology"], n_train=2, n_val=1, n_test=1, n_ood=1)
    write_tissue_labels(data / "brain_mri")
    root = tmp_path / "bundle"
    _run(["inference.yaml", "train.yaml"], root, data)
    assert set(torch.load(root / "models" / "model.pt", weights_only=True)) >= {"output_block.conv.conv.weight"}
    _run(["inference.yaml", "fit.yaml"], root, data)
    state = torch.load(root / "models" / "spectral.pt", weights_only=True)["model"]
    assert state["signatures_0"].shape[0] == 6 and int(state["calibration.n_scores"]) == 3  # 2 x 3 / 1 x 3 volumes

    out = tmp_path / "infer"
    _run(["inference.yaml"], root, data, output_dir=str(out))
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["case"] for r in rows] == [f"sub-00{i}_{c}" for c in ("T1w", "T2w", "FLAIR") for i in (3, 4)]
    assert {r["is_ood"] for r in rows} <= {"0", "1"} and json.loads((out / "guard.json").read_text())["n_cases"] == 6
    seg = nib.load(str(out / "sub-003_T1w_seg.nii.gz"))
    image = nib.load(str(data / "brain_mri" / "test" / "sub-003_T1w.nii.gz"))
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine), "labels on the input's grid"
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(6))

    ev = tmp_path / "evaluate"
    _run(["inference.yaml", "evaluate.yaml"], root, data, output_dir=str(ev))
    tables = json.loads((ev / "results.json").read_text())["tasks"]
    assert set(tables) == {"brain_T1w", "brain_T2w", "brain_FLAIR"}
    assert set(tables["brain_T1w"]) == {"wrong_contrast_pd", "inverted_t1w", "reoriented_pir"}
    assert set(tables["brain_T2w"]) == {"reoriented_pir"}, "T1w-only kinds leave the T2w slot normal"
    assert set(tables["brain_T1w"]["inverted_t1w"]["spectral"]) == {"auroc", "fpr95", "aupr_in", "aupr_out"}

    report = tmp_path / "calibration.json"
    _run(["inference.yaml", "train.yaml", "calibration.yaml"], root, data, report_path=str(report),
         tissue_json=str(data / "brain_mri" / "dataset.json"))  # fmt: skip
    content = json.loads(report.read_text())
    assert content["temperature"] > 0
    assert set(content["test"]) == {"brain_T1w", "brain_T2w", "brain_FLAIR", "pathology"}


def test_shipped_weights_segment_and_score() -> None:
    """The committed host and detector load weights-only and give a 6-class map and a finite score."""
    assert (BUNDLE / "models" / "model.pt").is_file() and (BUNDLE / "models" / "spectral.pt").is_file()
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    net = load_state(parser.get_parsed_content("network_def"), BUNDLE / "models" / "model.pt").eval()
    det = load_state(parser.get_parsed_content("detector_def"), BUNDLE / "models" / "spectral.pt")
    meta = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]
    x = torch.rand(1, 1, *meta["inputs"]["image"]["spatial_shape"])
    from medood.networks.feature_maps import FeatureRecorder, encoder_stages

    assert encoder_stages(net, example=x) == det.layers
    rec = FeatureRecorder(net, {k: k for k in det.layers})
    with torch.no_grad():
        out = net(x)
    assert out.shape == (1, meta["outputs"]["pred"]["num_channels"], *x.shape[2:])
    score = det.score_features({k: v[0] for k, v in rec.pop_calls().items()}).image_score
    assert det.is_fitted and det.calibration.has_scores and torch.isfinite(score).all()
