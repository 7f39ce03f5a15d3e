"""The page of ``scripts/bench_spectral.py`` (``docs/benchmarks/spectral.md``), from the JSON the script writes.

Spectral signatures against Mahalanobis, entropy and MC dropout on the multi-task host. Legacy per-method page;
the benchmark's own comparison, with intervals and paired tests on the bench sets, is the spectral host family
of ``docs/results.md`` (:mod:`medood.benchmark.spectral_host`).
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from medood.benchmark.tables import md_table
from medood.data.demo.ood import ID_AFTER_PREPROCESSING
from medood.metrics.ood_sets import METRICS, markdown_table

__all__ = ["UNCERTAINTY", "markdown", "mean_auroc", "protocol_tables", "standing"]

UNCERTAINTY = ("seg_entropy", "seg_entropy_volume", "mc_dropout")


def protocol_tables(tasks: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The tables without the sets the one protocol never scores as OOD, and the names dropped.

    Those sets are ``ID_AFTER_PREPROCESSING``; a JSON written before that definition has them.
    """
    dropped = sorted({s for t in tasks.values() for s in t if s in ID_AFTER_PREPROCESSING})
    kept = {task: {s: v for s, v in t.items() if s not in ID_AFTER_PREPROCESSING} for task, t in tasks.items()}
    return {task: t for task, t in kept.items() if t}, dropped


def mean_auroc(tasks: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {detector: mean AUROC over the task's OOD sets}}``."""
    return {
        task: {d: statistics.fmean(t[s][d]["auroc"] for s in t) for d in next(iter(t.values()))}
        for task, t in tasks.items()
    }


def standing(tasks: dict[str, Any]) -> list[str]:
    """Generated sentences: per task, spectral against the uncertainty scores and pooled Mahalanobis (mean AUROC).

    And the OOD kinds where spectral is not above every uncertainty score (the paper's claim).
    """
    means, lines = mean_auroc(tasks), []
    for task, m in means.items():
        unc = {d: m[d] for d in UNCERTAINTY if d in m}
        ahead = [d for d in unc if m["spectral"] > unc[d]]
        not_above = [
            s for s, row in tasks[task].items() if any(row[d]["auroc"] >= row["spectral"]["auroc"] for d in unc)
        ]
        lines.append(
            f"- {task}: spectral {m['spectral']:.3f}; ahead of {len(ahead)} of {len(unc)} uncertainty scores by mean "
            "AUROC (" + ", ".join(f"{d} {v:.3f}" for d, v in unc.items()) + f"); pooled Mahalanobis "
            f"{m['mahalanobis_pool']:.3f} ({'behind' if m['spectral'] < m['mahalanobis_pool'] else 'level or ahead'})"
            f"; OOD kinds where an uncertainty score is level with (e.g. both 1.000) or ahead of spectral: "
            f"{', '.join(not_above) or 'none'}."
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The page; every sentence is generated from ``result`` (the JSON this script writes)."""
    ov = result["overhead"]
    tasks, dropped = protocol_tables(result["tasks"])
    means = mean_auroc(tasks)
    dets = sorted(next(iter(means.values())))
    lines = [
        "# Spectral signatures vs Mahalanobis, entropy and MC dropout (multi-task host)",
        "",
        f"Machine: {result['machine']}. Produced by `scripts/bench_spectral.py` in {result['seconds']:.0f} s.",
        "Higher score = more OOD; OOD is the positive class; FPR95 = fraction of OOD accepted at 95 % ID TPR.",
        "Legacy per-method page: the comparison of every method on the benchmark sets, with intervals, is "
        "`docs/results.md` (`scripts/benchmark.py`).",
        "",
        f"Guard overhead (companion / plain segmentation bundle, median evaluator run on {ov['n_volumes']} ID test "
        f"volumes): **{result['guard_overhead']:.3f}x** ({ov['guard_overhead_end_to_end']:.3f}x for whole "
        "`monai.bundle run` processes).",
        "",
        "Spectral signatures identify the contrast of a brain training volume (leave-one-out nearest neighbour, "
        f"chance 1/3): {result['spectral_contrast_identification']['loo_1nn_accuracy']}.",
        "",
        "Cases per set: "
        + json.dumps({t: {k: n for k, n in v.items() if k not in dropped} for t, v in result["set_sizes"].items()}),
    ]
    if dropped:
        lines += [
            "",
            f"Not OOD after preprocessing, left out of every table and mean here: {', '.join(dropped)} "
            "(`medood.data.demo.ood.ID_AFTER_PREPROCESSING`; this JSON was written before that definition).",
        ]
    lines += [
        "",
        "## Mean AUROC per task",
        "",
        *md_table(["task", *dets], ([t, *(f"{m[d]:.3f}" for d in dets)] for t, m in means.items())),
        "",
        *standing(tasks),
        "",
    ]
    for metric in METRICS:
        lines += [f"## {metric}", "", markdown_table(tasks, metric)]
    return "\n".join(lines)
