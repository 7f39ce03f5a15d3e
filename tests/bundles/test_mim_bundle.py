"""The MIM-OOD bundle's stages and outputs on the run of its declared workflows (configs/workflows.yaml: vqvae ->
detector (image anomalies, then token corruptions) -> mim, the AR baseline, inference, evaluation, recalibration,
assembly, on tiny synthetic volumes; tests/bundles/test_bundles.py checks every bundle's properties, outputs and
export), and inference on a plain folder of scans with untrained weights."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.helpers.brain_volumes import AFFINE, LESION_SHAPE, lesion_volume
from tests.helpers.bundles import BundleRun, load_spec

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mim_brain_mri_anomaly_segmentation"
CONFIGS = BUNDLE / "configs"
TINY = load_spec(BUNDLE)["overrides"]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_all_stages_then_inference(bundle_run: Callable[[str], BundleRun], tmp_path: Path) -> None:
    run = bundle_run(BUNDLE.name)
    # each detector stage (image anomalies, then token corruptions, which the mim stage reads) trains the detector
    image_stage = _state(run.snapshot("train_detector_image") / "stages" / "detector.pt")
    token_stage = _state(run.snapshot("train_detector") / "stages" / "detector.pt")
    key = next(k for k in image_stage if k.startswith("token_detector.") and k.endswith("weight"))
    assert not torch.equal(image_stage[key], token_stage[key]), "each detector stage trains the token detector"
    state = _state(run.snapshot("train_mim") / "model.pt")
    assert torch.isfinite(state["fitted_nll_threshold"]), "the mim stage fits the in-painter NLL threshold"

    out = tmp_path / "eval_nll"  # the in-painter's own NLL flagging joined with the token detector's
    run.extra(["inference.yaml"], "infer", output_dir=str(out), flagging="union")
    for out in (run.output("infer"), run.output("infer_ar"), out):
        for i in range(2):
            img = nib.load(str(out / f"s{i}_T1w_anomaly_map.nii.gz"))
            assert img.shape == LESION_SHAPE
            np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
            assert (out / f"s{i}_T1w_anomaly_seg.nii.gz").exists(), "calibrated: masks are written"
        rows = list(csv.DictReader(open(out / "scores.csv")))
        assert {r["case"] for r in rows} == {"s0_T1w", "s1_T1w"} and {r["label"] for r in rows} == {"0", "1"}
        slices = list(csv.DictReader(open(out / "slice_scores.csv")))
        assert len(slices) == 2 * LESION_SHAPE[2]

    before, after = run.snapshot("train_ar") / "model.pt", run.snapshot("calibrate") / "model.pt"
    assert after.stat().st_mtime_ns > before.stat().st_mtime_ns, "recalibration rewrites the weights file"


@pytest.mark.slow
def test_assemble_merges_stages_trained_side_by_side(bundle_run: Callable[[str], BundleRun], tmp_path: Path) -> None:
    """model.pt = mim.pt's in-painter + detector.pt's token detector."""
    run = bundle_run(BUNDLE.name)
    root = tmp_path / "bundle"
    shutil.copytree(run.root / "models", root / "models")
    stale = torch.load(root / "models" / "stages" / "mim.pt", weights_only=True)
    stale["model"] = {k: v.zero_() if k.startswith("token_detector.") else v for k, v in stale["model"].items()}
    torch.save(stale, root / "models" / "stages" / "mim.pt")  # as if mim had been trained beside the detector
    run.extra(["inference.yaml", "train_tokens.yaml", "assemble.yaml"], "infer", root=root)
    merged = _state(root / "models" / "model.pt")
    det = _state(root / "models" / "stages" / "detector.pt")
    mim = _state(root / "models" / "stages" / "mim.pt")
    for k in merged:
        source = det if k.startswith("token_detector.") else mim
        if k.startswith(("token_detector.", "inpainter.")):
            assert torch.equal(merged[k], source[k]), k


@pytest.mark.slow
def test_evaluation_metrics_agree_with_scikit_learn(bundle_run: Callable[[str], BundleRun]) -> None:
    run = bundle_run(BUNDLE.name)
    out, data = run.output("evaluate"), Path(run.overrides()["dataset_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["volume"]) >= {"auroc", "ap", "fpr95"}
    voxel = metrics["voxel"]["metrics"]
    # the figures agree with scikit-learn on the written maps and the lesion masks (all voxels: no brain mask)
    maps = [np.asarray(nib.load(str(out / f"s{i}_T1w_anomaly_map.nii.gz")).dataobj) for i in (0, 1)]
    masks = [np.asarray(nib.load(str(data / "test" / f"s{i}_lesion.nii.gz")).dataobj) for i in (0, 1)]
    y, s = np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])
    assert voxel["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert voxel["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    scores = {r["case"]: float(r["score"]) for r in csv.DictReader(open(out / "scores.csv"))}
    assert metrics["volume"]["auroc"] == pytest.approx(float(scores["s0_T1w"] > scores["s1_T1w"]))
    assert 0.0 < voxel["best_dice"] <= 1.0
    assert {"dice", "slice_ap", "slice_auroc"} <= set(voxel), "Dice at the healthy threshold and slice metrics"
    assert (out / "worst_slices.png").stat().st_size > 0
    for name in ("thresholds.json", "report.html", "open_in_slicer.py"):  # medood.reports, from the output folder
        assert (out / name).stat().st_size > 0, name


def test_inference_config_alone_runs_on_a_plain_folder(tmp_path: Path) -> None:
    """No dataset.json: every NIfTI under dataset_dir is scored (untrained weights: load_pretrain false)."""
    folder = tmp_path / "scans" / "nested"
    folder.mkdir(parents=True)
    for i in range(2):
        img, _ = lesion_volume(np.random.default_rng(i), False)
        nib.save(nib.Nifti1Image(img, AFFINE), str(folder / f"p{i}.nii"))
    out = tmp_path / "out"
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer", bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "scans"), output_dir=str(out), load_pretrain=False, nll_threshold=5.0,
        nll_grow_threshold=4.0, **TINY,
    )  # untrained weights have no fitted NLL thresholds: fixed ones
    wf.initialize()
    assert wf.check_properties() in (None, [])
    wf.network_def.mark_fitted()  # untrained weights are enough to check the plumbing
    wf.run()
    assert sorted(p.name for p in out.glob("*_anomaly_map.nii.gz")) == ["p0_anomaly_map.nii.gz", "p1_anomaly_map.nii.gz"]
    assert (out / "scores.csv").exists() and (out / "slice_scores.csv").exists()
