"""``medood guard`` on a tiny MONAI segmentation bundle (random weights, sliding-window inference): the companion
bundle reproduces the original segmentation files byte for byte and adds scores that rank other-modality volumes
above in-distribution ones."""

from __future__ import annotations

import csv
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from medood.cli import main
from medood.engines.guard import read_id_datalist
from medood.io.run_folder import read_score_rows
from medood.utils.checkpoints import save_state

SIZE = 24


def _bundle_config() -> dict:
    return {
        "imports": ["$import glob", "$import torch"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "device": "$torch.device('cpu')",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "network_def": {
            "_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
            "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1,
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityd", "keys": "image"},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "separate_folder": False, "print_log": False},
        ]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }  # fmt: skip


def _volume(seed: int, kind: str = "mri") -> np.ndarray:
    """A head-like ellipsoid: bright 'white matter' core, darker rim (MRI-like); inverted or CT-like for OOD."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, SIZE)] * 3, indexing="ij"))
    r = np.sqrt(((g / np.array([0.8, 0.9, 0.75])[:, None, None, None] * rng.uniform(0.9, 1.1)) ** 2).sum(0))
    brain = r < 1.0
    tissue = np.where(r < 0.6, 1.0, 0.6) + 0.05 * rng.standard_normal(r.shape)
    if kind == "inverted":
        tissue = 1.6 - tissue
    if kind == "ct":  # bright skull shell, water-like flat interior, air outside at -1000
        return np.where(brain, np.where(r > 0.85, 1500.0, 40.0 + 5 * rng.standard_normal(r.shape)), -1000.0)
    return (brain * tissue * 100).astype(np.float32)


def _write(path: Path, volume: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return str(path)


def _run_bundle(config: Path, *overrides: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_read_id_datalist_holds_out_a_seeded_validation_split(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"")
    path = tmp_path / "list.json"
    path.write_text(json.dumps(["a.nii.gz", *[f"/abs/{i}.nii.gz" for i in range(9)]]))
    fit, val = read_id_datalist(path)
    assert len(fit) == 8 and len(val) == 2
    assert fit + val != [] and {d["image"] for d in fit}.isdisjoint(d["image"] for d in val)
    assert read_id_datalist(path)[1] == val, "seeded"
    assert str(tmp_path / "a.nii.gz") in {d["image"] for d in fit + val}, "relative paths start at the list"
    path.write_text(json.dumps({"training": ["x"]}))
    with pytest.raises(Exception, match="need at least 2"):
        read_id_datalist(path)


@pytest.mark.slow
def test_guard_companion_bundle_keeps_outputs_and_flags_other_modalities(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = tmp_path / "seg_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text(json.dumps(_bundle_config(), indent=2))
    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    save_state(net, bundle / "models" / "model.pt")
    id_list = {
        "training": [_write(tmp_path / "id" / f"train_{i}.nii.gz", _volume(i)) for i in range(10)],
        "validation": [_write(tmp_path / "id" / f"val_{i}.nii.gz", _volume(100 + i)) for i in range(5)],
    }
    (tmp_path / "id.json").write_text(json.dumps(id_list))
    test = tmp_path / "test"
    for i in range(3):
        _write(test / f"id_{i}.nii.gz", _volume(200 + i))
        _write(test / f"ood_inverted_{i}.nii.gz", _volume(300 + i, "inverted"))
        _write(test / f"ood_ct_{i}.nii.gz", _volume(400 + i, "ct"))

    companion = tmp_path / "guarded"
    args = ["guard", str(bundle), "--datalist", str(tmp_path / "id.json"), "--out", str(companion)]
    assert main(args) == 2 and not companion.exists()  # 5 validation cases cannot give alpha 0.05: refused
    assert "needs at least 19" in caplog.text
    assert main([*args, "--alpha", "0.2"]) == 0
    assert sorted(p.name for p in (companion / "configs").iterdir()) == ["inference.json", "metadata.json"]
    assert (companion / "models" / "guard.pt").is_file() and (companion / "models" / "model.pt").is_symlink()
    meta = json.loads((companion / "configs" / "metadata.json").read_text())["guard"]
    # through the bundle's own 16^3 sliding window (the whole 24^3 volume would give other shapes)
    assert meta["detector_args"]["layers"] == ["model.0", "model.1.submodule.1.submodule"]  # down layer, bottom
    assert meta["n_fit"] == 10 and meta["n_val"] == 5
    assert meta["threshold_rule"]["rule"] == "split-conformal" and meta["threshold_rule"]["rank"] == 5

    plain, guarded = tmp_path / "out_plain", tmp_path / "out_guarded"
    _run_bundle(bundle / "configs" / "inference.json", "--bundle_root", str(bundle), "--dataset_dir", str(test),
                "--output_dir", str(plain))  # fmt: skip
    _run_bundle(companion / "configs" / "inference.json", "--bundle_root", str(companion), "--dataset_dir", str(test),
                "--output_dir", str(guarded))  # fmt: skip
    seg = sorted(p.name for p in plain.iterdir())
    assert len(seg) == 9 and all(n.endswith("_seg.nii.gz") for n in seg)
    outputs = [*seg, "errors.csv", "guard.json", "run.json", "scores.csv", "thresholds.json"]
    assert sorted(p.name for p in guarded.iterdir()) == sorted(outputs)
    match, mismatch, errors = filecmp.cmpfiles(plain, guarded, seg, shallow=False)
    assert match == seg and not mismatch and not errors, "the original outputs are byte-identical"

    rows = {r["case"]: r for r in csv.DictReader(open(guarded / "scores.csv"))}
    assert set(rows) == {n.replace("_seg.nii.gz", "") for n in seg}
    score = {c: float(r["score"]) for c, r in rows.items()}
    id_max = max(v for c, v in score.items() if c.startswith("id_"))
    assert min(v for c, v in score.items() if c.startswith("ood_")) > id_max, score
    assert all(rows[c]["flagged"] == "1" for c in rows if c.startswith("ood_"))
    info = json.loads((guarded / "guard.json").read_text())
    assert info["n_cases"] == 9 and info["threshold"] == pytest.approx(meta["threshold"])
    # the guard's results go through the one run-folder writer: its reader, thresholds.json and run.json
    parsed = read_score_rows(guarded / "scores.csv")
    assert [r.case for r in parsed] == list(rows) and all(r.image and r.image.endswith(".nii.gz") for r in parsed)
    recorded = json.loads((guarded / "thresholds.json").read_text())
    assert recorded["score_threshold"] == pytest.approx(meta["threshold"])
    assert recorded["score_rule"]["rule"] == "split-conformal" and recorded["map_threshold"] is None
    manifest = json.loads((guarded / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["cases"] == list(rows)
