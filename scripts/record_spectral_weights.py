"""Write the spectral bundle's ``configs/metadata.json`` and ``large_files.yml`` from what its runs recorded.

Reads the training logs (``logs/train_run*.log``: per-epoch validation Dice and per-task losses, wall time), the
host calibration report (``docs/benchmarks/spectral_calibration.json``), the benchmark
(``docs/benchmarks/spectral.json``) and the shipped weights (md5, size, the detector's calibration), and writes
them under ``training`` / ``eval_metrics``.

    .venv/bin/python scripts/record_spectral_weights.py --run "seconds=2967 command=..." [--run ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import monai
import numpy
import torch

from medood.data.demo.ood import ID_AFTER_PREPROCESSING
from medood.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "spectral_brain_mri_ood_classification"
VAL = re.compile(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: ([0-9.]+)")
LOSS = re.compile(r"epoch (\d+) mean loss per task: (.+)")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def run_record(log: Path) -> dict[str, Any]:
    text = log.read_text()
    dice = [(int(e), float(v)) for e, v in VAL.findall(text)]
    losses = {int(e): dict(p.rsplit(" ", 1) for p in parts.split(", ")) for e, parts in LOSS.findall(text)}
    best = max(dice, key=lambda ev: ev[1]) if dice else None
    return {
        "log": str(log.relative_to(BUNDLE)),
        "val_mean_dice_per_epoch": [v for _, v in dice],
        "val_mean_dice_best": best[1] if best else None,
        "val_mean_dice_best_epoch": best[0] if best else None,
        "train_loss_per_task_last_epoch": {k: float(v) for k, v in losses[max(losses)].items()} if losses else {},
    }


def network_format() -> dict[str, Any]:
    def tensor(kind: str, channels: int, shape: list[int], defs: dict[str, str], value_range: list) -> dict:
        return {
            "type": kind,
            "format": "magnitude" if kind == "image" else "segmentation",
            "modality": "MR",
            "num_channels": channels,
            "spatial_shape": shape,
            "dtype": "float32",
            "value_range": value_range,
            "is_patch_data": False,
            "channel_def": defs,
        }

    labels = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter", "4": "haematoxylin", "5": "DAB"}
    score = tensor("probabilities", 1, [1], {"0": "spectral OOD score (higher = more OOD)"}, [])
    score["format"] = "magnitude"
    return {
        "inputs": {"image": tensor("image", 1, [32, 40, 32], {"0": "T1w, T2w or FLAIR"}, [0, 3])},
        "outputs": {"pred": tensor("image", 6, [32, 40, 32], labels, []), "ood_score": score},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", default=[], help="'key=value ...' of each training run, in order")
    args = p.parse_args()
    runs = []
    for i, log in enumerate(sorted((BUNDLE / "logs").glob("train_run*.log"))):
        extra = dict(kv.split("=", 1) for kv in args.run[i].split(" ; ")) if i < len(args.run) else {}
        runs.append({**extra, **run_record(log)})
    calibration = json.loads((ROOT / "docs" / "benchmarks" / "spectral_calibration.json").read_text())
    bench = json.loads((ROOT / "docs" / "benchmarks" / "spectral.json").read_text())
    det = torch.load(BUNDLE / "models" / "spectral.pt", weights_only=True)["model"]
    weights = {
        name: {"md5": md5(BUNDLE / "models" / name), "bytes": (BUNDLE / "models" / name).stat().st_size}
        for name in ("model.pt", "spectral.pt")
    }
    weights["spectral.pt"]["n_training_signatures"] = int(det["signatures_0"].shape[0])
    weights["spectral.pt"]["n_validation_volumes"] = int(det["calibration.n_scores"])
    if "signature_domains" in det and det["signature_domains"].numel():
        counts = det["signature_domains"].bincount().tolist()
        weights["spectral.pt"]["n_training_signatures_per_domain"] = dict(zip(("brain", "pathology"), counts))
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    meta.update(
        {
            "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
            "version": "0.2.0",
            "changelog": {
                "0.2.0": "detector on the first encoder stage (chosen on the validation OOD family, "
                "scripts/diagnose_spectral.py); signature bank over brain and pathology",
                "0.1.0": "initial spectral OOD bundle on a multi-task (brain tissue + pathology) DynUNet",
            },
            "monai_version": monai.__version__,
            "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": numpy.__version__,
            "required_packages_version": {
                "medood": "0.1.0",
                "pytorch-ignite": "0.5.5",
                "nibabel": "5.4.2",
                "scikit-image": "0.26.0",
            },
            "name": "Spectral OOD detection on a multi-task segmentation host (brain MRI)",
            "task": "Brain tissue segmentation with a per-volume out-of-distribution score and flag",
            "description": "A DynUNet trained jointly on brain tissue (T1w, T2w, FLAIR) and pathology stain "
            "segmentation; spectral signatures of its first encoder stage (chosen on validation OOD data), read by a "
            "hook on the same forward pass, give a per-volume OOD score (higher = more OOD) and is_ood at 5% "
            "healthy false alarms.",
            "authors": "medood developers",
            "copyright": "Copyright (c) medood developers",
            "intended_use": "Research only. Not a medical device. Shipped weights are trained on synthetic demo data.",
            "data_source": "medood demo brain_mri (MNI152-derived synthetic subjects, tissue labels from "
            "`medood data tissue`) and demo pathology (scikit-image IHC slide patches)",
            "data_type": "nibabel",
            "image_classes": "single-channel skull-stripped brain MRI, 5 mm, 32x40x32 around the brain",
            "pred_classes": "6 tissue / stain labels; OOD score and is_ood per volume",
            "eval_metrics": {
                "host_calibration_test": calibration["test"],
                "temperature": calibration["temperature"],
                "guard_overhead": bench["guard_overhead"],
                "auroc": {
                    t: {
                        s: {d: m["auroc"] for d, m in row.items()}
                        for s, row in sets.items()
                        if s not in ID_AFTER_PREPROCESSING  # e.g. reoriented_pir: ID after reorientation to RAS
                    }
                    for t, sets in bench["tasks"].items()
                },
                "machine": bench["machine"],
            },
            "training": {"runs": runs, "weights": weights, "script": "see docs/README.md (train.yaml, fit.yaml)"},
            "references": [
                "Karimi and Gholipour, IEEE Trans. Artificial Intelligence 4(2):383-397, 2023, arXiv:2004.06569"
            ],
            "network_data_format": network_format(),
        }
    )
    atomic_write_text(BUNDLE / "configs" / "metadata.json", json.dumps(meta, indent=4) + "\n")
    lines = ["# The weights ship inside the repository (models/); md5 checksums:", "large_files:"]
    for name, w in weights.items():
        lines += [f'- path: "models/{name}"', '  url: ""', f'  hash_val: "{w["md5"]}"', '  hash_type: "md5"']
    atomic_write_text(BUNDLE / "large_files.yml", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
