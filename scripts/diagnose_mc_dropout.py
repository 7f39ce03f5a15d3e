"""Why MC dropout ranks ``anisotropic`` brain volumes and pathology ``ultrasound`` below the ID test cases.

On the spectral bundle's host (``scripts/bench_spectral.py``'s protocol: the same host, preprocessing, MC samples
and OOD sets; ID test cases of each task against one OOD kind), per case:

* ``score``: the shipped detector's score, the predictive variance averaged over the predicted foreground;
* ``volume``: the same variance averaged over the whole image (``region="volume"``);
* ``fg_fraction``: the fraction of voxels predicted foreground (the denominator of ``score``);
* ``fg_sum``: the variance summed over the predicted foreground (the numerator);
* ``max_prob``: the mean over the foreground of the top softmax probability of the deterministic pass.

Per task and kind: AUROC (OOD positive) of each column, ID mean / std and OOD mean, and the OOD shift of each
column in ID standard deviations. Writes ``docs/benchmarks/mc_dropout_diagnosis.json`` (``--out``).

Usage::

    .venv/bin/python scripts/diagnose_mc_dropout.py [--contrasts T1w FLAIR] [--kinds anisotropic]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spectral import BUNDLE, ROOT, brain_items, pathology_items

from medood.benchmark.bundles import bundle_network
from medood.data.multitask import brain_transforms, pathology_transforms
from medood.detectors.mc_dropout import MEAN_PROBS, VARIANCE, MCDropoutDetector
from medood.utils.io import atomic_write_text
from medood.utils.machine import describe_machine

log = logging.getLogger("diagnose_mc_dropout")
COLUMNS = ("score", "volume", "fg_fraction", "fg_sum", "max_prob")


def case_row(mc: MCDropoutDetector, net: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    features = mc.extract_features(x)
    var, probs = features[VARIANCE][0], features[MEAN_PROBS][0]
    fg = probs.argmax(0) != 0
    with torch.no_grad():
        det = torch.softmax(net(x).float(), 1)[0]
    return {
        "score": float(mc.score_features(features).image_score[0]),
        "volume": float(var.mean()),
        "fg_fraction": float(fg.float().mean()),
        "fg_sum": float(var[fg].sum()),
        "max_prob": float(det.max(0).values[det.argmax(0) != 0].mean()),
    }


def summarise(rows: dict[str, list[dict[str, float]]], kind: str) -> dict[str, Any]:
    ids, oods = rows["id"], rows[kind]
    out: dict[str, Any] = {"n_id": len(ids), "n_ood": len(oods)}
    for col in COLUMNS:
        a, b = [r[col] for r in ids], [r[col] for r in oods]
        sd = statistics.stdev(a)
        out[col] = {
            "auroc": float(roc_auc_score([0] * len(a) + [1] * len(b), a + b)),
            "id_mean": statistics.fmean(a),
            "id_std": sd,
            "ood_mean": statistics.fmean(b),
            "shift_in_id_std": (statistics.fmean(b) - statistics.fmean(a)) / sd if sd > 0 else None,
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brain-dir", type=Path, default=ROOT / "demo_data" / "brain_mri")
    p.add_argument("--pathology-dir", type=Path, default=ROOT / "demo_data" / "pathology")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench_spectral")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "mc_dropout_diagnosis.json")
    p.add_argument("--contrasts", nargs="+", default=["T1w", "T2w", "FLAIR"])
    p.add_argument("--kinds", nargs="+", default=["anisotropic"], help="brain OOD kinds")
    p.add_argument("--pathology-sets", nargs="+", default=["ood_far/ultrasound"])
    p.add_argument("--extra-ood", type=int, default=2)
    p.add_argument("--mc-samples", type=int, default=6, help="as scripts/bench_spectral.py")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    net, parser = bundle_network(BUNDLE)
    mc = MCDropoutDetector(model=net, n_samples=args.mc_samples, region="foreground")
    domains = [
        (brain_transforms(False, parser["pixdim"], parser["fov"]),
         brain_items(args.brain_dir, args.work, args.extra_ood, args.seed)["eval"],
         {f"brain_{c}" for c in args.contrasts}, {"id", *args.kinds}),
        (pathology_transforms(False), pathology_items(args.pathology_dir)["eval"],
         {"pathology"}, {"id", *args.pathology_sets}),
    ]  # fmt: skip
    rows: dict[str, dict[str, list[dict[str, float]]]] = {}
    for transform, items, tasks, sets in domains:
        for item in items:
            task = item.get("task", "pathology")
            if task in tasks and item["set"] in sets:
                x = torch.as_tensor(transform({"image": item["image"]})["image"])[None].float()
                rows.setdefault(task, {}).setdefault(item["set"], []).append(case_row(mc, net, x))
    tables = {
        task: {kind: summarise(sets, kind) for kind in sorted(sets) if kind != "id"} for task, sets in rows.items()
    }
    report = {
        "machine": describe_machine(),
        "command": "python scripts/diagnose_mc_dropout.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - start),
        "host_dropout_modules": len(mc._own),
        "mc_samples": args.mc_samples,
        "columns": {
            "score": "shipped score: predictive variance, mean over the predicted foreground",
            "volume": "predictive variance, mean over the whole image",
            "fg_fraction": "fraction of voxels predicted foreground",
            "fg_sum": "predictive variance summed over the predicted foreground",
            "max_prob": "mean top softmax probability of the deterministic pass over its foreground",
        },
        "tasks": tables,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    log.info("wrote %s in %d s", args.out, report["seconds"])


if __name__ == "__main__":
    main()
