"""From per-case scores to the evidence page's numbers.

Metrics with intervals, paired tests, calibrated flag rates, robustness, and the writers of ``results.json``
and ``results_scores.csv.gz``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medood.benchmark.stats import (
    bootstrap_metrics,
    flagged_rate,
    paired_auroc_difference,
    paired_mean_auroc_difference,
)
from medood.metrics.tables import FPR95_CONVENTION, METRICS
from medood.utils.conformal import CalibrationSizeError, conformal_threshold
from medood.utils.io import atomic_path, atomic_write_text
from medood.utils.machine import describe_machine

__all__ = [
    "SCORES_FILE",
    "bench_header",
    "read_scores_table",
    "task_results",
    "write_json",
    "write_page",
    "write_scores_table",
]

logger = logging.getLogger(__name__)

SCORES_FILE = "results_scores.csv.gz"


#: ``{detector: {set: {case: score}}}``
Scores = dict[str, dict[str, dict[str, float]]]


def _aligned(a: Mapping[str, float], cases: list[str]) -> np.ndarray:
    return np.array([a[c] for c in cases], dtype=np.float64)


def _threshold(val: np.ndarray, alpha: float) -> tuple[float | None, str | None]:
    try:
        return conformal_threshold(val, alpha).threshold, None
    except CalibrationSizeError as err:
        return None, str(err)


def _paired(scores: Scores, task: dict[str, Any], id_cases: list[str], a: str, b: str, n_boot: int,
            seed: int) -> dict[str, Any]:  # fmt: skip
    """``{"baseline": b, "sets": {set: paired test}, "mean": paired test of the mean over those sets}`` of a - b."""
    ranked = list(task["sets"])
    sets = [s for s in ranked if a in task["sets"][s]["detectors"] and b in task["sets"][s]["detectors"]]
    cases = {s: sorted(set(scores[a][s]) & set(scores[b][s])) for s in sets}
    id_a, id_b = _aligned(scores[a]["id_test"], id_cases), _aligned(scores[b]["id_test"], id_cases)
    oods_a = {s: _aligned(scores[a][s], cases[s]) for s in sets}
    oods_b = {s: _aligned(scores[b][s], cases[s]) for s in sets}
    per_set = {s: paired_auroc_difference(id_a, oods_a[s], id_b, oods_b[s], n_boot, seed + ranked.index(s))
               for s in sets}  # fmt: skip
    mean = None
    if sets:
        mean = paired_mean_auroc_difference(id_a, list(oods_a.values()), id_b, list(oods_b.values()), n_boot, seed)
    return {"baseline": b, "sets": per_set, "mean": mean}


def task_results(
    manifest: dict[str, Any],
    scores: dict[str, dict[str, dict[str, float]]],
    cost: dict[str, dict[str, Any]],
    seeds: tuple[str, ...],
    alpha: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
    same_host: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``results.json`` entry of one (classification) task.

    Thresholds: per detector the split-conformal threshold of its ``id_val`` scores at ``alpha``; the realised
    false-alarm rate is the fraction of ``id_test`` above it. Paired tests (per OOD set, and of the mean over the
    sets), on the cases both scored:

    * ``paired``: each seed method against the best baseline on any classifier (the non-seed detector with the
      highest mean AUROC over the test OOD sets; with no baseline, the best other seed method);
    * ``paired_same_host``: each seed of ``same_host`` (``{seed: {"host", "rows": {detector: row}}}``, the
      post-hoc rows on the seed's own classifier) against the best non-seed row among them, and against that
      classifier's MSP row (``"msp"``), with the host named; ``"pairs"``: ``a - b`` for each ``[a, b]`` of the
      family's ``pairs`` (``{"a", "baseline": b, "sets", "mean"}``); a family's ``refit`` row (the seed refitted
      on its host) is no baseline of ``paired``.
    """
    sets = manifest["sets"]
    ood_sets = [s for s, v in sets.items() if v["role"] == "ood_test"]
    shift_sets = [s for s, v in sets.items() if v["role"] == "shift"]
    detectors = sorted(d for d, by in scores.items() if "id_test" in by and "id_val" in by)
    id_cases = sorted(set.intersection(*(set(scores[d]["id_test"]) for d in detectors)))
    out: dict[str, Any] = {"n_id": len(id_cases), "n_id_val": None, "seed_methods": list(seeds), "sets": {},
                           "detectors": {}, "robustness": {}, "paired": {}}  # fmt: skip
    flags: dict[str, dict[str, Any]] = {}
    for d in detectors:
        val = np.array(list(scores[d]["id_val"].values()), dtype=np.float64)
        thr, refused = _threshold(val, alpha)
        out["n_id_val"] = max(out["n_id_val"] or 0, val.size)
        flags[d] = {"threshold": thr, "n_val": int(val.size), "refused": refused,
                    "flagged_id_rate": flagged_rate(_aligned(scores[d]["id_test"], id_cases), thr)}  # fmt: skip
        out["detectors"][d] = {**flags[d], "alpha": alpha, **cost.get(d, {})}
        out["robustness"][d] = {
            s: flagged_rate(np.array(list(scores[d][s].values())), thr) for s in shift_sets if s in scores[d]
        }
    mean_auroc: dict[str, list[float]] = {d: [] for d in detectors}
    for i, s in enumerate(ood_sets):
        have = [d for d in detectors if s in scores[d]]
        if not have:
            continue
        cases = sorted(set.intersection(*(set(scores[d][s]) for d in have)))
        entry: dict[str, Any] = {"n": len(cases), "family": sets[s].get("family"), "detectors": {}}
        for d in have:
            m = bootstrap_metrics(_aligned(scores[d]["id_test"], id_cases), _aligned(scores[d][s], cases),
                                  n_boot, seed + i)  # fmt: skip
            entry["detectors"][d] = {**m, "flagged_id_rate": flags[d]["flagged_id_rate"], "alpha": alpha}
            mean_auroc[d].append(float(m["auroc"]))  # type: ignore[arg-type]
        out["sets"][s] = entry
    means = {d: float(np.mean(v)) for d, v in mean_auroc.items() if v}
    refits = {f.get("refit") for f in (same_host or {}).values()}  # a seed refitted on its host is no baseline
    baselines = [d for d in means if d not in seeds and d not in refits]
    for sm in (d for d in seeds if d in means):
        pool = baselines or [d for d in means if d != sm]
        if pool:
            best = max(pool, key=lambda d: means[d])
            out["paired"][sm] = _paired(scores, out, id_cases, sm, best, n_boot, seed)
            out["paired"][sm]["baseline_is_seed"] = not baselines
    out["paired_same_host"] = {}
    for sm, family in (same_host or {}).items():
        pool = [r for r in family["rows"].values() if r in means and r not in seeds]
        if sm not in means or not pool:
            continue
        best = max(pool, key=lambda d: means[d])
        entry = {"host": family["host"], **_paired(scores, out, id_cases, sm, best, n_boot, seed)}
        msp = family["rows"].get("msp")
        if msp in means:
            entry["msp"] = _paired(scores, out, id_cases, sm, msp, n_boot, seed)
        pairs = [(a, b) for a, b in family.get("pairs", ()) if a in means and b in means]
        if pairs:  # further paired tests the family asks for (a volume seed against each of its own rows)
            entry["pairs"] = [{"a": a, **_paired(scores, out, id_cases, a, b, n_boot, seed)} for a, b in pairs]
        out["paired_same_host"][sm] = entry
    out["mean_auroc"] = means
    return out


def write_scores_table(path: Path, rows: list[tuple[str, str, str, str, float]]) -> Path:
    """``task,set,detector,case,score`` rows, gzip-compressed CSV (deterministic: no timestamp in the header)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "set", "detector", "case", "score"])
    for r in sorted(rows):
        w.writerow([*r[:4], f"{r[4]:.9g}"])
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buf.getvalue().encode())
    return path


def read_scores_table(path: Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{task: {detector: {set: {case: score}}}}`` of a :func:`write_scores_table` file."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    with gzip.open(path, "rt", newline="") as f:
        for r in csv.DictReader(f):
            out.setdefault(r["task"], {}).setdefault(r["detector"], {}).setdefault(r["set"], {})[r["case"]] = float(
                r["score"]
            )
    return out


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` as indented JSON (NaN written as null)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not np.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return atomic_write_text(path, json.dumps(clean(payload), indent=2) + "\n")


def bench_header(conventions: bool = True) -> dict[str, Any]:
    """The first keys of a per-method benchmark JSON.

    ``machine`` (:func:`~medood.utils.machine.describe_machine`) and, with ``conventions``, ``fpr95_convention``
    and the ``metrics`` of its OOD tables.
    """
    out: dict[str, Any] = {"machine": describe_machine()}
    if conventions:
        out.update(fpr95_convention=FPR95_CONVENTION, metrics=list(METRICS))
    return out


def write_page(
    out: Path, payload: Mapping[str, Any], markdown: str, indent: int = 2, default: Any = None
) -> tuple[Path, Path]:
    """Atomically write a per-method benchmark: the JSON ``out`` and the page next to it (``.md``).

    ``payload`` is written as ``json.dumps`` writes it (NaN included; ``default`` for other types), ``markdown``
    as given; parent folders are created. Returns both paths.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    js = atomic_write_text(out, json.dumps(payload, indent=indent, default=default) + "\n")
    md = atomic_write_text(out.with_suffix(".md"), markdown)
    logger.info("wrote %s and %s", js, md)
    return js, md
