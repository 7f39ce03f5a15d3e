"""MECAM's AutoAugment-like policy on VALIDATION data: trained with and without it, scored, and a choice (issue 23).

For each 2-D MECAM bundle (pathology first, then dermoscopy), the bundle's classifier is trained with
``autoaugment: true`` by EXACTLY the shipped recipe otherwise: the bundle's own ``inference.yaml`` + ``train.yaml``
through ``python -m monai.bundle run`` (epochs, optimiser, data ``demo_data/<task>``, as the bundle's
``metadata.json`` ``training.command``), with only ``autoaugment``, ``seed`` and the output folders overridden
(every output goes to ``--runs-dir``; the shipped ``models/`` is never written). The ``autoaugment: false`` arm of
seed 0 is the shipped ``models/model.pt`` (trained by that command); further seeds of both arms are trained the
same way. Each model is scored with MECAM (the bundle's inference settings: preprocessing, exits, CAM grid) on the
bench's ID validation images (``id_val``) against the VALIDATION OOD family only (``ood_val`` sets), never a test
OOD kind: AUROC / FPR95 per set and seed with case-level bootstrap 95 % intervals, the paired (seed against seed)
difference of the mean AUROC over the validation sets, and the final exit's accuracy on ``id_val``.

Rule, fixed before the measurement (:func:`medood.benchmark.mecam_augmentation.choose_autoaugment`): the policy
becomes the default only if (1) the paired case-bootstrap 95 % interval of its mean validation AUROC minus the
default's (averaged over the validation OOD sets and the seeds, seed against seed) lies entirely above 0, and
(2) its ID validation accuracy is not lower by more than its interval: the upper end of the paired 95 % interval
of the accuracy difference is at least 0. The shipped weights are not retrained here: a win is reported (bundle
README), the configs' default stays ``false`` until the lead decides.

Writes ``docs/benchmarks/mecam_augmentation.{json,md}`` (the page generated from the JSON)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/choose_mecam_augmentation.py --seeds 0 1
    python scripts/choose_mecam_augmentation.py --render          # the page again from the JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medood.benchmark.bundles import bundle_parser
from medood.benchmark.mecam_augmentation import (
    arm_metrics,
    choose_autoaugment,
    compare_arms,
    train_run,
    training_overrides,
    validation_scores,
)
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.benchmark.tables import md_table
from medood.data.demo.bench import read_manifest
from medood.data.folders import class_folder_datalist, scoring_datalist

log = logging.getLogger("choose_mecam_augmentation")
ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {
    "pathology": "mecam_pathology_ood_classification",
    "dermoscopy": "mecam_dermoscopy_ood_classification",
}
ARMS = {"false": False, "true": True}


def validation_sets(manifest: dict[str, Any], class_names: list[str]) -> tuple[dict[str, list[Any]], np.ndarray]:
    """``({set: items}, ID labels)``: ``id_val`` (labels in the bundle's class order) first, then each ``ood_val``."""
    sets = manifest["sets"]
    id_key = next(k for k, s in sets.items() if s["role"] == "id_val")
    items = class_folder_datalist(sets[id_key]["dir"], None, class_names)[0]
    out: dict[str, list[Any]] = {id_key: items}
    out.update({k: scoring_datalist(s["dir"], None) for k, s in sets.items() if s["role"] == "ood_val"})
    return out, np.array([d["label"] for d in items])


def model_for(task: str, bundle: Path, arm: str, seed: int, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """``(weights, training record)`` of one arm and seed: the shipped model for ``false`` / seed 0, else trained."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["training"]
    if arm == "false" and seed == meta["seed"]:
        shipped = bundle / "models" / "model.pt"
        record = {"command": meta["command"], "seconds": meta["train_seconds"], "model": str(shipped.relative_to(ROOT))}
        return shipped, {**record, "shipped": True}
    run = args.runs_dir / task / f"autoaugment_{arm}_seed{seed}"
    overrides = training_overrides(run, ROOT / "demo_data" / task, ARMS[arm], seed)
    record = train_run(bundle, overrides, run, ROOT)
    record = {**record, "command": record["command"].replace(f"{ROOT}/", "")}  # paths from the repository root
    log.info("%s autoaugment=%s seed %d: trained in %.0f s", task, arm, seed, record["seconds"])
    return Path(record["model"]), record


def run_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train the missing runs, score every run on the validation sets, compare the arms and apply the rule."""
    bundle = ROOT / "bundles" / BUNDLES[task]
    class_names = list(bundle_parser(bundle, ["inference.yaml"])["class_names"])
    sets, labels = validation_sets(read_manifest(args.bench_dir / task), class_names)
    id_key = next(iter(sets))
    scores: dict[str, dict[str, np.ndarray]] = {}
    correct: dict[str, np.ndarray] = {}
    training: dict[str, list[dict[str, Any]]] = {}
    score_s = 0.0
    for arm in ARMS:
        runs = []
        for seed in args.seeds:
            weights, record = model_for(task, bundle, arm, seed, args)
            training.setdefault(arm, []).append({"seed": seed, **record})
            t0 = time.perf_counter()
            runs.append(validation_scores(bundle, weights, sets))
            score_s += time.perf_counter() - t0
        scores[arm] = {k: np.stack([r[k]["score"] for r in runs], axis=1) for k in sets}
        correct[arm] = np.stack([r[id_key]["pred"] == labels for r in runs], axis=1).astype(np.float64)
    metrics = {arm: arm_metrics(scores[arm], correct[arm], id_key, args.n_boot) for arm in ARMS}
    comparison = compare_arms(scores["true"], correct["true"], scores["false"], correct["false"], id_key, args.n_boot)
    chosen, why = choose_autoaugment(comparison)
    return {
        "bundle": f"bundles/{BUNDLES[task]}",
        "n": {k: len(v) for k, v in sets.items()},
        "training": training,
        "score_seconds": round(score_s, 1),
        "arms": metrics,
        "true_minus_false": comparison,
        "autoaugment_wins": chosen,
        "why": why,
    }


def _pct(v: float, sign: str = "") -> str:
    return f"{100 * v:{sign}.1f}"


def _ci(v: float, ci: list[float], sign: str = "") -> str:
    return f"{_pct(v, sign)} [{_pct(ci[0], sign)}, {_pct(ci[1], sign)}]"


def markdown(result: dict[str, Any]) -> str:
    """The page of the JSON this script writes."""
    lines = [
        "# MECAM's AutoAugment-like policy on VALIDATION data, and the choice (issue 23)",
        "",
        f"Generated by `{result['command']}` ({result['seconds']:.0f} s: scoring, and training of the runs it did "
        f"not find in `--runs-dir`; {result['machine']}; "
        f"OMP_NUM_THREADS={result['omp_threads']}). Each arm is the bundle's `train.yaml` recipe (the shipped "
        "command), `autoaugment: false` (default; seed 0 = the shipped `models/model.pt`) or `true` "
        f"(`medood.transforms.RandPolicyd` before Cutout), seeds {', '.join(map(str, result['seeds']))}; every "
        "model scored with MECAM (the bundle's inference settings) on the bench `id_val` images against the "
        "validation OOD family only (never a test OOD kind). AUROC / FPR95 in % with case-level bootstrap 95 % "
        f"intervals ({result['n_boot']} resamples). Rule (fixed before the run): {result['rule']}",
        "",
    ]
    for task, r in result["tasks"].items():
        sets = list(r["arms"]["false"]["runs"][0])
        lines += [f"## {task} (`{r['bundle']}`)", "",
                  f"Cases: {', '.join(f'{k} {v}' for k, v in r['n'].items())}. Scoring: {r['score_seconds']:.0f} s "
                  "for all runs.", ""]  # fmt: skip
        rows = []
        for arm, m in r["arms"].items():
            for i, run in enumerate(m["runs"]):
                t = r["training"][arm][i]
                rows.append([arm, t["seed"], *(f"{_ci(run[s]['auroc'], run[s]['auroc_ci'])} / "
                                               f"{_ci(run[s]['fpr95'], run[s]['fpr95_ci'])}" for s in sets),
                             _pct(m["run_mean_aurocs"][i]), _pct(m["run_accuracies"][i]),
                             f"{t['seconds']:.0f}" + (" (shipped)" if t.get("shipped") else "")])  # fmt: skip
        header = ["autoaugment", "seed", *(f"{s} AUROC / FPR95" for s in sets), "mean AUROC", "ID val accuracy",
                  "train s"]  # fmt: skip
        d = r["true_minus_false"]
        auroc, acc = d["mean_auroc"], d["accuracy"]
        verdict = "autoaugment true wins (the default is the lead's call)" if r["autoaugment_wins"] else "stays false"
        commands = [f"`{t['command']}`" for runs in r["training"].values() for t in runs if not t.get("shipped")]
        noted = [(arm, t) for arm, ts in r["training"].items() for t in ts if "note" in t]
        notes = [f"- `{arm}` seed {t['seed']}: {t['note']}." for arm, t in noted]
        lines += [
            *md_table(header, rows),
            "",
            f"Mean over seeds: `false` mean AUROC {_pct(r['arms']['false']['mean_auroc'])}, accuracy "
            f"{_ci(r['arms']['false']['accuracy'], r['arms']['false']['accuracy_ci'])}; `true` mean AUROC "
            f"{_pct(r['arms']['true']['mean_auroc'])}, accuracy "
            f"{_ci(r['arms']['true']['accuracy'], r['arms']['true']['accuracy_ci'])}.",
            "",
            f"`true` - `false` (paired, seed against seed): mean AUROC {_ci(auroc['difference'], auroc['ci'], '+')} "
            f"(p {auroc['p']:.3f}; per seed {', '.join(_pct(v, '+') for v in auroc['runs'])}); ID val accuracy "
            f"{_ci(acc['difference'], acc['ci'], '+')}.",
            "",
            f"**Choice: {verdict}.** {r['why']}.",
            "",
            f"Training commands: {'; '.join(commands)}.",
            "",
            *notes,
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", type=Path, default=Path("/tmp/medood_benchmark/bench"))
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/medood_mecam_augmentation"),
                    help="training runs (a run with train.json is reused, not retrained)")  # fmt: skip
    ap.add_argument("--tasks", nargs="+", choices=list(BUNDLES), default=list(BUNDLES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds of both arms (0: the shipped false)")
    ap.add_argument("--n-boot", type=int, default=1000)
    add_common_arguments(ap, ROOT / "docs" / "benchmarks" / "mecam_augmentation.json", threads=1)
    args = ap.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        **bench_header(),
        "command": "python scripts/choose_mecam_augmentation.py " + " ".join(sys.argv[1:]),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "seeds": args.seeds,
        "n_boot": args.n_boot,
        "rule": " ".join(choose_autoaugment.__doc__.split("\n\n")[1].split()),  # type: ignore[union-attr]
        "tasks": {},
    }
    for task in args.tasks:
        result["tasks"][task] = run_task(task, args)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_page(args.out, result, markdown(result))  # after every task: a finished task is kept
    log.info("autoaugment wins: %s", {k: v["autoaugment_wins"] for k, v in result["tasks"].items()})


if __name__ == "__main__":
    main()
