"""The spectral brain bundle's outputs on the run of its declared workflows (configs/workflows.yaml: train -> fit ->
inference -> evaluate -> calibration report on a tiny demo set; tests/bundles/test_bundles.py checks every bundle's
properties, outputs and export); and the shipped host + detector weights."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from medood.utils.checkpoints import load_state
from tests.helpers.bundles import BundleRun

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "spectral_brain_mri_ood_classification"
CONFIGS = BUNDLE / "configs"


@pytest.mark.slow
def test_train_fit_infer_evaluate_calibrate(bundle_run: Callable[[str], BundleRun]) -> None:
    run = bundle_run(BUNDLE.name)
    data = Path(run.overrides()["dataset_dir"])
    assert set(torch.load(run.snapshot("train") / "model.pt", weights_only=True)) >= {"output_block.conv.conv.weight"}
    state = torch.load(run.snapshot("fit") / "spectral.pt", weights_only=True)["model"]
    domains = state["signature_domains"].bincount().tolist()
    assert domains[0] == 6 and domains[1] > 0, "brain (2 x 3 volumes) and pathology training patches in one bank"
    assert state["signatures_0"].shape[0] == sum(domains) and int(state["calibration.n_scores"]) == 3  # 1 x 3

    out = run.output("infer")
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["case"] for r in rows] == [f"sub-00{i}_{c}" for c in ("T1w", "T2w", "FLAIR") for i in (3, 4)]
    guard = json.loads((out / "guard.json").read_text())
    assert guard["n_cases"] == 6 and guard["threshold"] is None and "refused" in guard["threshold_rule"]
    assert {r["flagged"] for r in rows} == {""}, "3 healthy calibration scores cannot give a 5 % flag: no decision"
    seg = nib.load(str(out / "sub-003_T1w_seg.nii.gz"))
    image = nib.load(str(data / "test" / "sub-003_T1w.nii.gz"))
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine), "labels on the input's grid"
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(6))

    tables = json.loads((run.output("evaluate") / "results.json").read_text())["tasks"]
    assert set(tables) == {"brain_T1w", "brain_T2w", "brain_FLAIR"}
    assert set(tables["brain_T1w"]) == {"wrong_contrast_pd", "inverted_t1w"}, "reoriented_pir is ID after RAS"
    assert tables["brain_T2w"] == {}, "T1w-only kinds leave the T2w slot normal; reoriented_pir is ID"
    assert set(tables["brain_T1w"]["inverted_t1w"]["spectral"]) == {"auroc", "fpr95", "aupr_in", "aupr_out"}

    content = json.loads((run.output("calibration") / "calibration.json").read_text())
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

    assert det.layers == parser["ood_layers"] and det.layers[0] in encoder_stages(net, 4, example=x)
    rec = FeatureRecorder(net, {k: k for k in det.layers})
    with torch.no_grad():
        out = net(x)
    assert out.shape == (1, meta["outputs"]["pred"]["num_channels"], *x.shape[2:])
    score = det.score_features({k: v[0] for k, v in rec.pop_calls().items()}).image_score
    assert det.is_fitted and det.calibration.has_scores and torch.isfinite(score).all()


def test_shipped_bank_scores_pathology_against_pathology_signatures(tmp_path: Path) -> None:
    """The shipped bank holds both domains the host serves; a pathology ID patch is nearest to a pathology signature
    and scores as it would against the pathology signatures alone (fails on the brain-only bank shipped before)."""
    from medood.data.demo import build_demo
    from medood.data.multitask import pathology_datalist, pathology_transforms
    from medood.detectors.spectral import SpectralDetector
    from medood.networks.feature_maps import FeatureRecorder

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    net = load_state(parser.get_parsed_content("network_def"), BUNDLE / "models" / "model.pt").eval()
    det = load_state(parser.get_parsed_content("detector_def"), BUNDLE / "models" / "spectral.pt")
    counts = det.signature_domains.bincount().tolist()
    assert len(counts) == 2 and min(counts) > 0, "brain (0) and pathology (1) signatures"
    build_demo(tmp_path, only=["pathology"], n_train=1, n_val=1, n_test=2, n_ood=1)
    items = pathology_datalist(tmp_path / "pathology", "test")
    x = torch.stack([torch.as_tensor(pathology_transforms(False)(dict(it))["image"]) for it in items]).float()
    rec = FeatureRecorder(net, {k: k for k in det.layers})
    with torch.no_grad():
        net(x)
    feats = {k: v[0] for k, v in rec.pop_calls().items()}
    assert det.nearest_domain(feats).tolist() == [1] * len(items)
    path_only = SpectralDetector(layers=det.layers)
    rows = det.signature_domains == 1
    path_only.signatures_0 = det.signatures_0[rows]
    path_only.mark_fitted()
    assert torch.allclose(det.score_features(feats).image_score, path_only.score_features(feats).image_score)
