"""Results tables of OOD detection: per OOD set and detector, AUROC, FPR95, AUPR-In and AUPR-Out.

Pure functions over score tensors (higher = more OOD; OOD is the positive class), plus :func:`write_results`,
which writes the table atomically as JSON and markdown. Used by :func:`medood.engines.posthoc.evaluate_posthoc`
and :class:`~medood.handlers.posthoc_scores.PosthocScoreWriter`.

FPR95 follows the OOD literature (OpenOOD, NERO): the fraction of OOD images accepted as ID at the threshold that
accepts 95 % of the ID images (:func:`medood.metrics.functional.fpr_at_tpr` with ``positive="id"``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medood.metrics.functional import aupr_in, aupr_out, auroc, fpr_at_tpr
from medood.utils.io import atomic_write_text

__all__ = [
    "FPR95_CONVENTION",
    "METRICS",
    "SCORE_CONVENTION",
    "Table",
    "method_standing",
    "ood_metrics",
    "results_markdown",
    "results_payload",
    "results_table",
    "write_results",
]

logger = logging.getLogger(__name__)

FPR95_CONVENTION = "fraction of OOD accepted when 95% of ID is accepted"
SCORE_CONVENTION = "higher = more OOD; OOD is the positive class (label 1) for AUROC and AUPR-Out"
METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")
_METRIC_TITLES = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
_BETTER = {"auroc": "higher", "fpr95": "lower", "aupr_in": "higher", "aupr_out": "higher"}

Table = dict[str, dict[str, dict[str, float]]]


def ood_metrics(id_scores: Tensor, ood_scores: Tensor) -> dict[str, float]:
    """AUROC, FPR95 (OOD accepted at 95 % ID TPR), AUPR-In and AUPR-Out of ID vs OOD scores (higher = OOD)."""
    scores = torch.cat([id_scores.reshape(-1), ood_scores.reshape(-1)]).double().numpy()
    is_ood = torch.cat([torch.zeros(id_scores.numel()), torch.ones(ood_scores.numel())]).numpy()
    return {
        "auroc": auroc(scores, is_ood),
        "fpr95": fpr_at_tpr(scores, is_ood, 0.95, positive="id"),
        "aupr_in": aupr_in(scores, is_ood),
        "aupr_out": aupr_out(scores, is_ood),
    }


def results_table(id_scores: Mapping[str, Tensor], ood_scores: Mapping[str, Mapping[str, Tensor]]) -> Table:
    """``{ood_set: {detector: {"auroc", "fpr95", "aupr_in", "aupr_out"}}}`` from per-detector score tensors."""
    table: Table = {}
    for set_name, by_det in ood_scores.items():
        table[set_name] = {}
        for det, scores in by_det.items():
            finite = torch.isfinite(id_scores[det]).all() and torch.isfinite(scores).all()
            if not finite:
                logger.warning("%s on %s: non-finite scores; metrics set to NaN", det, set_name)
                table[set_name][det] = dict.fromkeys(METRICS, math.nan)
            else:
                table[set_name][det] = ood_metrics(id_scores[det], scores)
    return table


def results_payload(table: Table, **meta: Any) -> dict[str, Any]:
    """The JSON document: conventions, ``meta`` (accuracy, counts, ...), the table and per-detector means."""
    detectors = list(next(iter(table.values()))) if table else []
    mean = {d: {m: float(sum(table[s][d][m] for s in table) / len(table)) for m in METRICS} for d in detectors}
    return {
        "fpr95_convention": FPR95_CONVENTION,
        "score_convention": SCORE_CONVENTION,
        "metrics": list(METRICS),
        **meta,
        "detectors": detectors,
        "ood_sets": list(table),
        "results": table,
        "mean": mean,
    }


def method_standing(table: Mapping[str, Mapping[str, Mapping[str, float]]], method: str, label: str = "") -> str:
    """One sentence from a ``{ood_set: {detector: metrics}}`` table: where ``method`` stands (AUROC, in %).

    Its rank by mean AUROC, the sets where it is best (or tied), the sets where it is more than 5 points behind the
    best detector (with that detector) and the sets where it is below chance. Pages write this instead of fixed
    prose, so the text always follows the numbers.
    """
    sets = list(table)
    dets = list(table[sets[0]])
    mean = {d: sum(table[k][d]["auroc"] for k in sets) / len(sets) for d in dets}
    order = sorted(dets, key=lambda d: -mean[d])
    top = {k: max((d for d in dets if d != method), key=lambda d: table[k][d]["auroc"]) for k in sets}
    best = [k for k in sets if table[k][method]["auroc"] >= table[k][top[k]]["auroc"] - 1e-9]
    behind = sorted(
        (k for k in sets if table[k][top[k]]["auroc"] - table[k][method]["auroc"] > 0.05),
        key=lambda k: table[k][method]["auroc"] - table[k][top[k]]["auroc"],
    )
    below = [f"{k} ({100 * table[k][method]['auroc']:.1f})" for k in sets if table[k][method]["auroc"] < 0.5]
    gaps = ", ".join(
        f"{k} ({100 * table[k][method]['auroc']:.1f} vs {top[k]} {100 * table[k][top[k]]['auroc']:.1f})" for k in behind
    )
    other = next(d for d in order if d != method)
    return (
        f"{label or method}: rank {order.index(method) + 1} of {len(order)} by mean AUROC "
        f"({100 * mean[method]:.1f}; best other: {other} {100 * mean[other]:.1f}); best (or tied) on: "
        f"{', '.join(best) or 'none'}"
        f"; more than 5 AUROC points behind the best detector on: {gaps or 'none'}; below chance (AUROC < 50) on "
        f"{len(below)} of {len(sets)} OOD sets" + (": " + ", ".join(below) if below else "") + "."
    )


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def results_markdown(payload: Mapping[str, Any], title: str = "Post-hoc OOD detection") -> str:
    """The results as markdown: a header with the conventions, then one table per metric.

    Rows are detectors, columns the OOD sets plus the mean over sets; values in %.
    """
    table, sets = payload["results"], payload["ood_sets"]
    lines = [
        f"# {title}",
        "",
        f"- score: {SCORE_CONVENTION}",
        f"- FPR95 = {FPR95_CONVENTION} (OpenOOD / NERO convention); AUPR-In: ID positive; AUPR-Out: OOD positive",
        "- detectors fitted on the ID training set only; nothing is tuned on the OOD sets",
    ]
    for key in ("task", "classifier", "id_test_accuracy", "n_train", "n_id_test", "machine"):
        if key in payload:
            value = payload[key]
            value = f"{100 * value:.2f} %" if key == "id_test_accuracy" else value
            lines.append(f"- {key.replace('_', ' ')}: {value}")
    if "ood_set_sizes" in payload:
        lines.append("- OOD set sizes: " + ", ".join(f"{k} {v}" for k, v in payload["ood_set_sizes"].items()))
    for metric in METRICS:
        lines += [
            "",
            f"## {_METRIC_TITLES[metric]} (%, {_BETTER[metric]} is better)",
            "",
            "| detector | " + " | ".join(sets) + " | mean |",
            "|---" * (len(sets) + 2) + "|",
        ]
        for det in payload["detectors"]:
            cells = [_fmt(table[s][det][metric]) for s in sets] + [_fmt(payload["mean"][det][metric])]
            lines.append(f"| {det} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    payload: Mapping[str, Any], out_dir: str | os.PathLike[str], title: str | None = None
) -> tuple[Path, Path]:
    """Atomically write ``results.json`` and ``results.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = atomic_write_text(out / "results.json", json.dumps(payload, indent=2, allow_nan=True) + "\n")
    md = atomic_write_text(out / "results.md", results_markdown(payload, *([title] if title else [])))
    return js, md
