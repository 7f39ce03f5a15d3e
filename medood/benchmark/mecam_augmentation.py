"""A MECAM bundle trained with and without its AutoAugment-like policy, scored on VALIDATION data, and a choice.

Used by ``scripts/choose_mecam_augmentation.py`` (issue 23):

* :func:`training_overrides` / :func:`train_run`: one training run of a 2-D MECAM bundle through its own
  ``inference.yaml`` + ``train.yaml`` (``python -m monai.bundle run``), with ``autoaugment`` and ``seed`` set and
  every output redirected into a run folder (the shipped ``models/`` is never written);
* :func:`validation_scores`: a trained bundle network's MECAM scores and final-exit predictions on image sets;
* :func:`arm_metrics` / :func:`compare_arms` / :func:`choose_autoaugment`: per-set AUROC / FPR95 with case-level
  bootstrap intervals, the paired (seed against seed) difference of the mean AUROC over the sets, the paired
  accuracy difference, and the rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medood.benchmark.bundles import (
    bundle_parser,
    collect_scores,
    item_loader,
    load_network,
    process_run_command,
    timed_process_run,
)
from medood.benchmark.stats import bootstrap_metrics, bootstrap_statistic, paired_mean_auroc_difference, set_aurocs
from medood.utils.io import atomic_write_text

__all__ = [
    "arm_metrics",
    "choose_autoaugment",
    "compare_arms",
    "train_run",
    "training_overrides",
    "validation_scores",
]

CONFIGS = ("inference.yaml", "train.yaml")


def training_overrides(run: Path, dataset_dir: Path, autoaugment: bool, seed: int) -> dict[str, Any]:
    """The ``monai.bundle run`` overrides of one training run: the policy, the seed and every output under ``run``.

    Everything else (epochs, optimiser, data) stays the bundle's ``train.yaml`` recipe. ``autoaugment`` stays a
    bool: the command line gets ``--autoaugment=True`` / ``False``, which ``monai.bundle run`` (fire) parses as a
    bool (a lowercase ``false`` arrives as the string ``"false"``, which the bundle reads as False through
    :func:`medood.utils.as_flag`; before that it was truthy and switched the policy on).
    """
    run = run.absolute()
    return {
        "dataset_dir": str(dataset_dir.absolute()),
        "autoaugment": bool(autoaugment),
        "seed": seed,
        "ckpt_path": str(run / "model.pt"),
        "ckpt_dir": str(run / "stages"),
        "resume_dir": str(run / "resume"),
        "log_dir": str(run / "logs"),
        "output_dir": str(run / "out"),
    }


def train_run(bundle: Path, overrides: Mapping[str, Any], run: Path, pythonpath: Path | None = None) -> dict[str, Any]:
    """Train ``bundle``'s classifier into ``run`` (unless ``run/train.json`` exists) and return that record.

    The record: ``{"command", "seconds", "model"}``; an existing one is reused as it is (a finished run is not
    trained again).
    """
    record = run / "train.json"
    if record.is_file():
        return dict(json.loads(record.read_text()))
    run.mkdir(parents=True, exist_ok=True)
    configs = [bundle / "configs" / c for c in CONFIGS]
    overrides = {"bundle_root": str(bundle), **overrides}
    seconds = timed_process_run(configs, overrides, pythonpath)
    command = process_run_command(configs, overrides)  # as a shell line: the config list in double quotes
    line = " ".join(["python", *command[1:5], f'"{command[5]}"', *command[6:]])
    out = {"command": line, "seconds": round(seconds, 1), "model": overrides["ckpt_path"]}
    atomic_write_text(record, json.dumps(out, indent=1) + "\n")
    return out


def validation_scores(
    bundle: Path, weights: Path, sets: Mapping[str, Sequence[Mapping[str, Any]]], batch_size: int = 32
) -> dict[str, dict[str, np.ndarray]]:
    """``{set: {"score": (N,), "pred": (N,)}}``: MECAM scores (the bundle's inference settings) and final-exit classes.

    The bundle's ``inference.yaml`` (preprocessing, exits, CAM grid) with ``weights``, on the CPU; every set's
    items (``{"image": path, ...}``) in order.
    """
    parser = bundle_parser(bundle, ["inference.yaml"], device=torch.device("cpu"))
    detector = load_network(parser, "network_def", weights)
    transform = parser.get_parsed_content("preprocessing")

    def score(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = detector.score(x)
        return {"score": out.image_score.double(), "pred": out.extras["pred_class"]}

    result = {}
    for name, items in sets.items():
        got = collect_scores(item_loader(items, transform, batch_size, keys=["image"]), score)
        result[name] = {k: v.numpy() for k, v in got.items()}
    return result


def arm_metrics(
    scores: Mapping[str, np.ndarray], correct: np.ndarray, id_key: str, n_boot: int = 1000
) -> dict[str, Any]:
    """One arm's validation figures over its ``R`` runs.

    Args:
        scores: ``{set: (N, R) scores}``, the ID set ``id_key`` among them (run ``r`` in column ``r``).
        correct: ``(N_id, R)`` 0 / 1, the final exit right on each ID case.
        id_key: the ID set.
        n_boot: bootstrap resamples (seeded: the run index).

    Returns:
        ``{"runs": [{set: bootstrap metrics}, ...], "mean_auroc", "run_mean_aurocs", "accuracy", "run_accuracies"}``
        (means over the OOD sets, then over the runs).
    """
    n_runs = correct.shape[1]
    runs = [
        {k: bootstrap_metrics(scores[id_key][:, r], v[:, r], n_boot, seed=r) for k, v in scores.items() if k != id_key}
        for r in range(n_runs)
    ]
    means = [set_aurocs({k: v[:, r] for k, v in scores.items()}, id_key, digits=None)["mean"] for r in range(n_runs)]
    accuracies = [float(v) for v in correct.mean(0)]
    return {
        "runs": runs,
        "mean_auroc": float(np.mean(means)),
        "run_mean_aurocs": means,
        "accuracy": float(np.mean(accuracies)),
        "accuracy_ci": bootstrap_statistic(correct, lambda c: float(c.mean()), n_boot),
        "run_accuracies": accuracies,
    }


def compare_arms(
    a: Mapping[str, np.ndarray], correct_a: np.ndarray, b: Mapping[str, np.ndarray], correct_b: np.ndarray,
    id_key: str, n_boot: int = 1000,
) -> dict[str, Any]:  # fmt: skip
    """Arm ``a`` minus arm ``b``, run ``r`` against run ``r`` on the same resampled cases.

    Returns:
        ``{"mean_auroc": paired mean-AUROC difference (sets and runs; interval, p, per run),
        "accuracy": {"difference", "ci"}}`` (the ID cases resampled, both arms' runs together).
    """
    oods = [k for k in a if k != id_key]
    auroc = paired_mean_auroc_difference(a[id_key], [a[k] for k in oods], b[id_key], [b[k] for k in oods], n_boot)
    n_runs = correct_a.shape[1]
    both = np.concatenate([correct_a, correct_b], axis=1)

    def gap(c: np.ndarray) -> float:
        return float(c[:, :n_runs].mean() - c[:, n_runs:].mean())

    return {"mean_auroc": auroc, "accuracy": {"difference": gap(both), "ci": bootstrap_statistic(both, gap, n_boot)}}


def choose_autoaugment(comparison: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether ``autoaugment: true`` becomes the default, and why, from :func:`compare_arms` (policy - default).

    Rule, fixed before the measurement: the policy becomes the default only if (1) the paired case-bootstrap 95 %
    interval of its mean validation AUROC minus the default's (averaged over the validation OOD sets and the
    seeds, seed against seed) lies entirely above 0, and (2) its ID validation accuracy is not lower by more than
    its interval: the upper end of the paired 95 % interval of the accuracy difference is at least 0.
    """
    auroc, acc = comparison["mean_auroc"], comparison["accuracy"]
    above = auroc["ci"][0] > 0
    not_lower = acc["ci"][1] >= 0
    why = (
        f"mean AUROC difference {100 * auroc['difference']:+.1f} "
        f"[{100 * auroc['ci'][0]:+.1f}, {100 * auroc['ci'][1]:+.1f}] points ({'above' if above else 'not above'} 0); "
        f"accuracy difference {100 * acc['difference']:+.1f} [{100 * acc['ci'][0]:+.1f}, {100 * acc['ci'][1]:+.1f}]"
        f" ({'not lower' if not_lower else 'lower'} beyond its interval)"
    )
    return above and not_lower, why
