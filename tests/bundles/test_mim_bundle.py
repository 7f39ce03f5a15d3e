"""Every stage of the MIM-OOD bundle (train vqvae -> detector -> mim, the AR baseline, inference, evaluation)
through MONAI's ConfigWorkflow on tiny synthetic volumes, with check_properties() clean."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from sklearn.metrics import average_precision_score, roc_auc_score

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mim_brain_mri_anomaly_segmentation"
CONFIGS = BUNDLE / "configs"
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, 2.0, 0, -40.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])  # LAS-ish, anisotropic
SHAPE = (22, 20, 14)

TINY = {
    "fov": [16, 16, 16],
    "pixdim": [2.0, 2.0, 2.0],
    "tokenizer_def": {"channels": [8, 16], "num_res_layers": 1, "num_embeddings": 16, "embedding_dim": 8,
                      "use_position": True},
    "transformer_def": {"hidden_size": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2, "dropout": 0.0},
    "prior_def": {"attn_layers_dim": 16, "attn_layers_depth": 1, "attn_layers_heads": 2},
    "network_def#grid_size": [4, 4],
    "epochs": 1,
    "val_interval": 1,
    "slices_per_volume": 2,
    "batch_size": 8,
    "n_restorations": 2,
}


def _volume(rng: np.random.Generator, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    brain = (zz**2 + yy**2 + xx**2) < 0.8
    img = (0.6 + 0.1 * rng.standard_normal(SHAPE)) * brain
    mask = np.zeros(SHAPE, np.uint8)
    if lesion:
        mask[(abs(zz) < 0.25) & (abs(yy) < 0.25) & (abs(xx) < 0.3) & brain] = 1
        img[mask > 0] = 1.5
    return (img * 1000).astype(np.int16), mask


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("brain")
    rng = np.random.default_rng(0)
    lists: dict[str, list] = {"training": [], "validation": [], "test": []}
    for split, n in (("training", 3), ("validation", 2), ("test", 2)):
        for i in range(n):
            lesion = split == "test" and i == 0
            img, mask = _volume(rng, lesion)
            (root / split).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(img, AFFINE), str(root / split / f"s{i}_T1w.nii.gz"))
            entry = {"T1w": f"{split}/s{i}_T1w.nii.gz", "image": f"{split}/s{i}_T1w.nii.gz"}
            if split == "test":
                nib.save(nib.Nifti1Image(mask, AFFINE), str(root / split / f"s{i}_lesion.nii.gz"))
                entry.update(label=f"{split}/s{i}_lesion.nii.gz", is_anomalous=int(lesion))
            lists[split].append(entry)
    (root / "dataset.json").write_text(json.dumps(lists))
    return root


def _run(configs: list[str], kind: str, bundle_root: Path, data: Path, **extra: object) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type=kind,
        bundle_root=str(bundle_root), dataset_dir=str(data), **{**TINY, **extra},
    )
    wf.initialize()
    assert wf.check_properties() in (None, []), wf.check_properties()
    wf.run()
    wf.finalize()
    return wf


@pytest.mark.slow
def test_all_stages_then_inference(tmp_path: Path, data: Path) -> None:
    root = tmp_path / "bundle"
    _run(["inference.yaml", "train_vqvae.yaml"], "train", root, data)
    assert (root / "models" / "stages" / "vqvae.pt").exists()
    # the image-anomaly detector stage (the alternative), then the token-corruption one that the mim stage reads
    _run(["inference.yaml", "train_tokens.yaml", "train_detector_image.yaml", "augment.yaml"], "train", root, data,
         volumes_per_batch=2)
    image_stage = torch.load(root / "models" / "stages" / "detector.pt", weights_only=True)["model"]
    _run(["inference.yaml", "train_tokens.yaml", "train_detector.yaml"], "train", root, data)
    token_stage = torch.load(root / "models" / "stages" / "detector.pt", weights_only=True)["model"]
    key = next(k for k in image_stage if k.startswith("token_detector.") and k.endswith("weight"))
    assert not torch.equal(image_stage[key], token_stage[key]), "each detector stage trains the token detector"
    _run(["inference.yaml", "train_tokens.yaml", "train_mim.yaml", "augment.yaml"], "train", root, data)  # augmented
    assert (root / "models" / "model.pt").exists(), "the mim stage writes the calibrated final weights"
    state = torch.load(root / "models" / "model.pt", weights_only=True)["model"]
    assert torch.isfinite(state["fitted_nll_threshold"]), "the mim stage fits the in-painter NLL threshold"
    _run(["inference.yaml", "inference_ar.yaml", "train_tokens.yaml", "train_ar.yaml"], "train", root, data)
    assert (root / "models" / "model_ar.pt").exists()

    runs = ((["inference.yaml"], "eval", {}), (["inference.yaml", "inference_ar.yaml"], "eval_ar", {}),
            (["inference.yaml"], "eval_nll", {"flagging": "union"}))
    for configs, out, extra in runs:
        _run(configs, "infer", root, data, output_dir=str(tmp_path / out), **extra)
        for i in range(2):
            img = nib.load(str(tmp_path / out / f"s{i}_T1w_anomaly_map.nii.gz"))
            assert img.shape == SHAPE
            np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
            assert (tmp_path / out / f"s{i}_T1w_anomaly_seg.nii.gz").exists(), "calibrated: masks are written"
        rows = list(csv.DictReader(open(tmp_path / out / "scores.csv")))
        assert {r["case"] for r in rows} == {"s0_T1w", "s1_T1w"} and {r["label"] for r in rows} == {"0", "1"}
        slices = list(csv.DictReader(open(tmp_path / out / "slice_scores.csv")))
        assert len(slices) == 2 * SHAPE[2]

    before = (root / "models" / "model.pt").stat().st_mtime_ns
    _run(["inference.yaml", "train_tokens.yaml", "calibrate.yaml"], "infer", root, data, atd_threshold=0.3)
    assert (root / "models" / "model.pt").stat().st_mtime_ns > before, "recalibration rewrites the weights file"

    # stages trained side by side are merged: model.pt = mim.pt's in-painter + detector.pt's token detector
    stale = torch.load(root / "models" / "stages" / "mim.pt", weights_only=True)
    stale["model"] = {k: v.zero_() if k.startswith("token_detector.") else v for k, v in stale["model"].items()}
    torch.save(stale, root / "models" / "stages" / "mim.pt")  # as if mim had been trained beside the detector
    _run(["inference.yaml", "train_tokens.yaml", "assemble.yaml"], "infer", root, data)
    merged = torch.load(root / "models" / "model.pt", weights_only=True)["model"]
    det = torch.load(root / "models" / "stages" / "detector.pt", weights_only=True)["model"]
    mim = torch.load(root / "models" / "stages" / "mim.pt", weights_only=True)["model"]
    for k in merged:
        source = det if k.startswith("token_detector.") else mim
        if k.startswith(("token_detector.", "inpainter.")):
            assert torch.equal(merged[k], source[k]), k

    _run(["inference.yaml", "evaluate.yaml"], "infer", root, data, output_dir=str(tmp_path / "evaluate"))
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert set(metrics["volume"]) >= {"auroc", "ap", "fpr95"}
    voxel = metrics["voxel"]["metrics"]
    # the figures agree with scikit-learn on the written maps and the lesion masks (all voxels: no brain mask)
    maps = [np.asarray(nib.load(str(tmp_path / "evaluate" / f"s{i}_T1w_anomaly_map.nii.gz")).dataobj) for i in (0, 1)]
    masks = [np.asarray(nib.load(str(data / "test" / f"s{i}_lesion.nii.gz")).dataobj) for i in (0, 1)]
    y, s = np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])
    assert voxel["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert voxel["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    scores = {r["case"]: float(r["score"]) for r in csv.DictReader(open(tmp_path / "evaluate" / "scores.csv"))}
    assert metrics["volume"]["auroc"] == pytest.approx(float(scores["s0_T1w"] > scores["s1_T1w"]))
    assert 0.0 < voxel["best_dice"] <= 1.0
    assert {"dice", "slice_ap", "slice_auroc"} <= set(voxel), "Dice at the healthy threshold and slice metrics"
    assert (tmp_path / "evaluate" / "worst_slices.png").stat().st_size > 0
    for name in ("thresholds.json", "report.html", "open_in_slicer.py"):  # medood.reports, from the output folder
        assert (tmp_path / "evaluate" / name).stat().st_size > 0, name


def test_inference_config_alone_runs_on_a_plain_folder(tmp_path: Path, data: Path) -> None:
    """No dataset.json: every NIfTI under dataset_dir is scored (untrained weights: load_pretrain false)."""
    folder = tmp_path / "scans" / "nested"
    folder.mkdir(parents=True)
    for i in range(2):
        img, _ = _volume(np.random.default_rng(i), False)
        nib.save(nib.Nifti1Image(img, AFFINE), str(folder / f"p{i}.nii"))
    out = tmp_path / "out"
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer", bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "scans"), output_dir=str(out), load_pretrain=False, **TINY,
    )
    wf.initialize()
    assert wf.check_properties() in (None, [])
    wf.network_def.mark_fitted()  # untrained weights are enough to check the plumbing
    wf.run()
    assert sorted(p.name for p in out.glob("*_anomaly_map.nii.gz")) == ["p0_anomaly_map.nii.gz", "p1_anomaly_map.nii.gz"]
    assert (out / "scores.csv").exists() and (out / "slice_scores.csv").exists()
