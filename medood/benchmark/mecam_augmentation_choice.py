"""The run of ``scripts/choose_mecam_augmentation.py`` and its page: both arms trained, scored on validation data.

Per task (a 2-D MECAM bundle), :func:`run_task` gets each arm's model per seed (:func:`model_for`: the shipped
weights for ``autoaugment: false`` at the bundle's seed, else a training run through the bundle's own recipe),
scores the bench's ``id_val`` and ``ood_val`` sets (:func:`validation_sets`), compares the arms and applies
:func:`~medood.benchmark.mecam_augmentation.choose_autoaugment`. :func:`markdown`: the page of the JSON
(``docs/benchmarks/mecam_augmentation.md``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
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
from medood.benchmark.runner import BUNDLES as BUNDLES_DIR
from medood.benchmark.tables import md_table, pct, pct_ci
from medood.data.demo.bench import read_manifest
from medood.data.folders import class_folder_datalist, scoring_datalist

__all__ = ["ARMS", "BUNDLES", "markdown", "model_for", "run_task", "validation_sets"]

log = logging.getLogger(__name__)

ROOT = BUNDLES_DIR.parent
#: task -> its 2-D MECAM bundle
BUNDLES = {
    "pathology": "mecam_pathology_ood_classification",
    "dermoscopy": "mecam_dermoscopy_ood_classification",
}
#: arm -> the ``autoaugment`` value
ARMS = {"false": False, "true": True}


def validation_sets(manifest: dict[str, Any], class_names: list[str]) -> tuple[dict[str, list[Any]], np.ndarray]:
    """``({set: items}, ID labels)``: ``id_val`` (labels in the bundle's class order) first, then each ``ood_val``."""
    sets = manifest["sets"]
    id_key = next(k for k, s in sets.items() if s["role"] == "id_val")
    items = class_folder_datalist(sets[id_key]["dir"], None, class_names)[0]
    out: dict[str, list[Any]] = {id_key: items}
    out.update({k: scoring_datalist(s["dir"], None) for k, s in sets.items() if s["role"] == "ood_val"})
    return out, np.array([d["label"] for d in items])


def model_for(task: str, arm: str, seed: int, runs_dir: Path) -> tuple[Path, dict[str, Any]]:
    """``(weights, training record)`` of one arm and seed: the shipped model for ``false`` / seed 0, else trained.

    A run is trained into ``runs_dir/<task>/autoaugment_<arm>_seed<seed>`` (a finished one is reused).
    """
    bundle = BUNDLES_DIR / BUNDLES[task]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["training"]
    if arm == "false" and seed == meta["seed"]:
        shipped = bundle / "models" / "model.pt"
        record = {"command": meta["command"], "seconds": meta["train_seconds"], "model": str(shipped.relative_to(ROOT))}
        return shipped, {**record, "shipped": True}
    run = runs_dir / task / f"autoaugment_{arm}_seed{seed}"
    overrides = training_overrides(run, ROOT / "demo_data" / task, ARMS[arm], seed)
    record = train_run(bundle, overrides, run, ROOT)
    record = {**record, "command": record["command"].replace(f"{ROOT}/", "")}  # paths from the repository root
    log.info("%s autoaugment=%s seed %d: trained in %.0f s", task, arm, seed, record["seconds"])
    return Path(record["model"]), record


def run_task(task: str, bench_dir: Path, runs_dir: Path, seeds: Sequence[int], n_boot: int) -> dict[str, Any]:
    """Train the missing runs, score every run on the validation sets, compare the arms and apply the rule."""
    bundle = BUNDLES_DIR / BUNDLES[task]
    class_names = list(bundle_parser(bundle, ["inference.yaml"])["class_names"])
    sets, labels = validation_sets(read_manifest(bench_dir / task), class_names)
    id_key = next(iter(sets))
    scores: dict[str, dict[str, np.ndarray]] = {}
    correct: dict[str, np.ndarray] = {}
    training: dict[str, list[dict[str, Any]]] = {}
    score_s = 0.0
    for arm in ARMS:
        runs = []
        for seed in seeds:
            weights, record = model_for(task, arm, seed, runs_dir)
            training.setdefault(arm, []).append({"seed": seed, **record})
            t0 = time.perf_counter()
            runs.append(validation_scores(bundle, weights, sets))
            score_s += time.perf_counter() - t0
        scores[arm] = {k: np.stack([r[k]["score"] for r in runs], axis=1) for k in sets}
        correct[arm] = np.stack([r[id_key]["pred"] == labels for r in runs], axis=1).astype(np.float64)
    metrics = {arm: arm_metrics(scores[arm], correct[arm], id_key, n_boot) for arm in ARMS}
    comparison = compare_arms(scores["true"], correct["true"], scores["false"], correct["false"], id_key, n_boot)
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


def markdown(result: dict[str, Any]) -> str:
    """The page of the JSON ``scripts/choose_mecam_augmentation.py`` writes."""
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
        lines += _task_markdown(task, r)
    return "\n".join(lines)


def _task_markdown(task: str, r: dict[str, Any]) -> list[str]:
    sets = list(r["arms"]["false"]["runs"][0])
    lines = [f"## {task} (`{r['bundle']}`)", "",
             f"Cases: {', '.join(f'{k} {v}' for k, v in r['n'].items())}. Scoring: {r['score_seconds']:.0f} s "
             "for all runs.", ""]  # fmt: skip
    rows = []
    for arm, m in r["arms"].items():
        for i, run in enumerate(m["runs"]):
            t = r["training"][arm][i]
            rows.append([arm, t["seed"], *(f"{pct_ci(run[s]['auroc'], run[s]['auroc_ci'])} / "
                                           f"{pct_ci(run[s]['fpr95'], run[s]['fpr95_ci'])}" for s in sets),
                         pct(m["run_mean_aurocs"][i]), pct(m["run_accuracies"][i]),
                         f"{t['seconds']:.0f}" + (" (shipped)" if t.get("shipped") else "")])  # fmt: skip
    header = ["autoaugment", "seed", *(f"{s} AUROC / FPR95" for s in sets), "mean AUROC", "ID val accuracy",
              "train s"]  # fmt: skip
    d = r["true_minus_false"]
    auroc, acc = d["mean_auroc"], d["accuracy"]
    verdict = "autoaugment true wins (the default is the lead's call)" if r["autoaugment_wins"] else "stays false"
    commands = [f"`{t['command']}`" for runs in r["training"].values() for t in runs if not t.get("shipped")]
    noted = [(arm, t) for arm, ts in r["training"].items() for t in ts if "note" in t]
    notes = [f"- `{arm}` seed {t['seed']}: {t['note']}." for arm, t in noted]
    false, true = r["arms"]["false"], r["arms"]["true"]
    return [
        *lines,
        *md_table(header, rows),
        "",
        f"Mean over seeds: `false` mean AUROC {pct(false['mean_auroc'])}, accuracy "
        f"{pct_ci(false['accuracy'], false['accuracy_ci'])}; `true` mean AUROC {pct(true['mean_auroc'])}, accuracy "
        f"{pct_ci(true['accuracy'], true['accuracy_ci'])}.",
        "",
        f"`true` - `false` (paired, seed against seed): mean AUROC {pct_ci(auroc['difference'], auroc['ci'], '+')} "
        f"(p {auroc['p']:.3f}; per seed {', '.join(pct(v, '+') for v in auroc['runs'])}); ID val accuracy "
        f"{pct_ci(acc['difference'], acc['ci'], '+')}.",
        "",
        f"**Choice: {verdict}.** {r['why']}.",
        "",
        f"Training commands: {'; '.join(commands)}.",
        "",
        *notes,
        "",
    ]
