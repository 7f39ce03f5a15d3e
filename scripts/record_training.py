"""Copy the shipped weights' provenance into the MIM-OOD bundle's ``configs/metadata.json``.

Reads ``<bundle>/logs/stages.jsonl`` (one line per stage, written by ``scripts/train_demo_weights.sh``: command,
seed, wall time, machine), the best validation loss of every stage from ``<bundle>/logs/<stage>.log``, the
healthy calibration recorded in the weights, and (if present) the test figures of ``docs/benchmarks/mim.json``,
and writes them under ``training`` / ``eval_metrics`` with the md5 of each weight file (also into
``large_files.yml``).

    .venv/bin/python scripts/record_training.py [--note "what a reader of the figures must know" ...]

After ``train_demo_weights.sh calibrate calibrate_ar`` (new healthy calibration, same networks), record only the
weights' checksums and calibration, keeping the stage records::

    .venv/bin/python scripts/record_training.py --weights-only --calibration-data "what the healthy set was"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from medood.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation"
VAL = re.compile(r"Epoch\[(\d+)\] Metrics -- val_loss: ([0-9.]+)")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def stage_records() -> list[dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    jsonl = BUNDLE / "logs" / "stages.jsonl"
    for line in jsonl.read_text().splitlines() if jsonl.exists() else []:
        rec = json.loads(line)
        records[rec["stage"]] = rec  # the last run of a stage wins
    out = []
    for stage, rec in records.items():
        log = BUNDLE / "logs" / f"{stage}.log"
        vals = [(int(e), float(v)) for e, v in VAL.findall(log.read_text())] if log.exists() else []
        if vals:
            best = min(vals, key=lambda ev: ev[1])
            rec = {**rec, "val_loss_best": best[1], "val_loss_best_epoch": best[0], "val_loss_last": vals[-1][1]}
        out.append(rec)
    return out


def calibration(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    levels, score_q, map_q = (state[f"calibration.{k}"] for k in ("levels", "score_quantiles", "map_quantiles"))
    pick = {p: int(torch.argmin((levels - p / 100).abs())) for p in (50.0, 95.0, 99.0, 99.5, 99.9)}
    return {
        "healthy_volume_score_percentiles": {f"p{p:g}": float(score_q[i]) for p, i in pick.items()},
        "healthy_map_value_percentiles": {f"p{p:g}": float(map_q[i]) for p, i in pick.items()},
        "n_healthy_volumes": int(state["calibration.n_scores"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--note", action="append", default=[], help="a note stored under training.notes (repeatable)")
    ap.add_argument("--weights-only", action="store_true", help="update only the weights' md5 and calibration")
    ap.add_argument("--calibration-data", default=None, help="the healthy calibration set (training.calibration)")
    args = ap.parse_args()
    meta_path = BUNDLE / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    weights = {name: BUNDLE / "models" / name for name in ("model.pt", "model_ar.pt")}
    if args.weights_only:
        training = meta.setdefault("training", {})
        training["weights"] = {
            n: {"md5": md5(p), "bytes": p.stat().st_size, **calibration(p)} for n, p in weights.items() if p.exists()
        }
        training["notes"] = list(training.get("notes", [])) + args.note
        if args.calibration_data:
            training["calibration"] = args.calibration_data
        write_metadata(meta_path, meta, weights)
        return
    meta["training"] = {
        "script": "scripts/train_demo_weights.sh (seeded; see each stage's command)",
        "data": "medood demo brain_mri (small, 2 mm, seed 0): 40 healthy training and 8 healthy validation subjects",
        "stages": stage_records(),
        "notes": args.note,
        "weights": {
            n: {"md5": md5(p), "bytes": p.stat().st_size, **calibration(p)} for n, p in weights.items() if p.exists()
        },
    }
    bench = ROOT / "docs" / "benchmarks" / "mim.json"
    if bench.exists():
        b = json.loads(bench.read_text())
        meta["eval_metrics"] = {
            "data": f"medood demo brain_mri test set ({b['n_test_volumes']} volumes, synthetic lesions)",
            "machine": b["machine"],
            **{k: {m: v for m, v in r.items() if isinstance(v, float)} for k, r in b["methods"].items()},
        }
    write_metadata(meta_path, meta, weights)


def write_metadata(meta_path: Path, meta: dict[str, Any], weights: dict[str, Path]) -> None:
    """Write metadata.json and the md5 checksums of large_files.yml."""
    atomic_write_text(meta_path, json.dumps(meta, indent=4) + "\n")
    lines = ["# The shipped weights are committed in models/ (no download). md5 checksums:", "large_files:"]
    for name, p in weights.items():
        if p.exists():
            lines += [f'- path: "models/{name}"', '  url: ""', f'  hash_val: "{md5(p)}"', '  hash_type: "md5"']
    atomic_write_text(BUNDLE / "large_files.yml", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
