"""Benchmark the heatmap decoder against every post-hoc detector on the same classifier, and its cost.

For each task the bundle's shipped weights are used: the frozen classifier and the trained decoder
(``bundles/heatmap_<task>_ood_classification/models``; the endoscopy classifier is the NERO bundle's;
``brain_mri_mecam_classifier`` is the brain bundle with the MECAM bundle's classifier, ``mecam_classifier.yaml``). Every
post-hoc detector of ``medood list`` (default settings, nothing tuned on OOD data) is fitted on the ID training
set in one backbone pass (:func:`~medood.detectors.posthoc.fit_many`); the ID test set and every OOD set are then
scored by all detectors **and** the heatmap decoder with one backbone pass per batch
(:func:`~medood.detectors.posthoc.score_many`; ODIN adds its own perturbed passes). Per OOD set (ID test vs that
set, OOD positive): AUROC, FPR95 (fraction of OOD accepted when 95 % of ID is accepted), AUPR-In, AUPR-Out.

Also recorded per task: ``mean |h|`` of the maps per set (the image score is that mean) and its ratio to the ID
test set's, and the cost: the decoder alone and the full ``det.score`` (classifier + decoder) over the classifier
forward alone (median of interleaved pairs on the same batches).

Writes ``docs/benchmarks/heatmap.json`` (``{"machine", "tasks": {task: {ood_set: {detector: {"auroc", "fpr95",
"aupr_in", "aupr_out"}}}}, ...}``) and ``heatmap.md``; every sentence of the page is generated from the JSON
(measurements: :mod:`medood.benchmark.heatmap_bench`; page: :mod:`medood.benchmark.heatmap_page`).

Legacy: the one protocol for comparing methods is ``scripts/benchmark.py`` (``docs/results.md``).

Usage::

    .venv/bin/python scripts/bench_heatmap.py [--threads 2] [--tasks pathology endoscopy brain_mri] \
        [--data demo_data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medood.benchmark.heatmap_bench import TASKS, run_heatmap_bench
from medood.benchmark.heatmap_page import markdown
from medood.benchmark.report import write_page
from medood.benchmark.script import add_common_arguments, render_only, start

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, ROOT / "docs" / "benchmarks" / "heatmap.json")
    p.add_argument("--data", type=Path, default=ROOT / "demo_data", help="the demo data root")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    args = p.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    res = run_heatmap_bench(args.data, args.tasks, args.repeats)
    write_page(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
