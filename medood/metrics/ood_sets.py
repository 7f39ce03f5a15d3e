"""OOD metrics per task and per OOD set: each OOD set of a task against that task's in-distribution test cases.

The metrics are :func:`medood.metrics.tables.ood_metrics` (AUROC, FPR95 = the fraction of OOD cases accepted when
95 % of the ID cases are accepted, computed from the sorted scores with no threshold window, AUPR-In, AUPR-Out);
this module only groups cases by task and set, for several detectors at once.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medood.metrics.tables import METRICS, ood_metrics
from medood.utils.io import atomic_write_text

__all__ = [
    "ID_SET",
    "METRICS",
    "markdown_table",
    "read_scores_csv",
    "task_tables",
    "write_task_tables",
]

#: The set name of in-distribution cases.
ID_SET = "id"


def task_tables(
    scores: Mapping[str, Mapping[str, float]], case_sets: Mapping[str, tuple[str, str]]
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{task: {ood_set: {detector: metrics}}}`` from per-detector case scores.

    Args:
        scores: ``{detector: {case: score}}`` (higher = more OOD).
        case_sets: ``{case: (task, set)}``; the set :data:`ID_SET` holds the task's in-distribution cases.

    Raises:
        ValueError: a task without ID cases, or a detector that did not score a listed case.
    """
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    tasks = sorted({t for t, _ in case_sets.values()})
    for task in tasks:
        members: dict[str, list[str]] = {}
        for case, (t, s) in case_sets.items():
            if t == task:
                members.setdefault(s, []).append(case)
        if ID_SET not in members:
            raise ValueError(f"task {task!r} has no in-distribution ({ID_SET!r}) cases")
        table: dict[str, dict[str, dict[str, float]]] = {}
        for ood_set in sorted(s for s in members if s != ID_SET):
            table[ood_set] = {}
            for det, det_scores in scores.items():
                missing = [c for c in members[ID_SET] + members[ood_set] if c not in det_scores]
                if missing:
                    raise ValueError(f"{det} has no score for {missing[:3]}")
                table[ood_set][det] = ood_metrics(
                    torch.tensor([det_scores[c] for c in members[ID_SET]], dtype=torch.float64),
                    torch.tensor([det_scores[c] for c in members[ood_set]], dtype=torch.float64),
                )
        out[task] = table
    return out


def read_scores_csv(path: str | os.PathLike[str]) -> dict[str, float]:
    """``{case: score}`` of a ``scores.csv`` (``case,score,...``)."""
    with open(path, newline="") as f:
        return {r["case"]: float(r["score"]) for r in csv.DictReader(f)}


def markdown_table(tables: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]], metric: str) -> str:
    """One markdown table of ``metric``: rows task / OOD set, columns detectors."""
    detectors = sorted({d for t in tables.values() for s in t.values() for d in s})
    lines = ["| task | OOD set | " + " | ".join(detectors) + " |", "|---|---|" + "---|" * len(detectors)]
    for task, sets in tables.items():
        for ood_set, row in sets.items():
            cells = [f"{row[d][metric]:.3f}" if d in row else "" for d in detectors]
            lines.append(f"| {task} | {ood_set} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_task_tables(
    tables: Mapping[str, Any], out_dir: str | os.PathLike[str], extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``results.json`` (``{**extra, "tasks": tables}``) and ``results.md`` (AUROC and FPR95 tables)."""
    out = Path(out_dir)
    atomic_write_text(out / "results.json", json.dumps({**dict(extra or {}), "tasks": tables}, indent=2) + "\n")
    md = ["# OOD detection per task and OOD set", "", "Higher score = more OOD; OOD is the positive class.", ""]
    for metric, title in (("auroc", "AUROC (higher is better)"), ("fpr95", "FPR95 (lower is better)")):
        md += [f"## {title}", "", markdown_table(tables, metric)]
    atomic_write_text(out / "results.md", "\n".join(md))
    return out / "results.json"
