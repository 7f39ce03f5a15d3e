"""Benchmark MECAM against every post-hoc detector on the same multi-exit classifier, with the exit ablation and
the scoring cost.

For each task (the MECAM bundles' demo tasks: dermoscopy, pathology, brain-MRI contrast) the bundle's shipped
detector (``models/model.pt``) and the bundle's own preprocessing and datalists are used (parsed from its configs):

* ``tasks``: ``{task: {ood_set: {detector: {auroc, fpr95, aupr_in, aupr_out}}}}`` for ``mecam`` (the bundle's
  exits) and every post-hoc detector of ``medood list`` scored on the classifier's **final exit**
  (:class:`~medood.networks.nets.FinalExitClassifier`, whose ``nn.Linear`` head is the final exit), fitted on the
  ID training set in one backbone pass and scoring in one pass per set
  (:func:`medood.engines.posthoc.evaluate_posthoc`; ODIN adds its own perturbed passes). Default settings, except
  NERO's ``k`` = 175/512 of the feature width (the NERO code's ResNet-18 ratio; the default 175 exceeds these
  networks' widths). Nothing is tuned on the OOD sets.
* ``exit_ablation``: the same metrics for MECAM with each of the 15 non-empty exit subsets
  (:meth:`~medood.detectors.mecam.MECAMDetector.score_subsets`).
* ``cost``: MECAM's scoring time over the plain forward pass of the classifier on the same batches, median of
  interleaved repeated pairs after a warm-up (the target is <= 2.2: MECAM needs a second, masked pass), with
  the bundle's ``cam_grid``; ``cam_grid`` has the mean metrics and the cost of both settings for every task.

Every sentence of ``mecam.md`` is generated from ``mecam.json`` (measurements: :mod:`medood.benchmark.mecam_bench`;
page: :mod:`medood.benchmark.mecam_page`). Legacy: the one protocol for comparing methods is
``scripts/benchmark.py`` (``docs/results.md``).

Usage::

    .venv/bin/python scripts/bench_mecam.py [--threads 1] [--tasks dermoscopy pathology brain_mri] \
        [--data /path/to/demo_data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medood.benchmark.mecam_bench import BUNDLES, run_mecam_bench
from medood.benchmark.mecam_page import markdown
from medood.benchmark.report import write_page
from medood.benchmark.script import add_common_arguments, render_only, start

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, ROOT / "docs" / "benchmarks" / "mecam.json")
    p.add_argument("--data", type=Path, default=ROOT / "demo_data", help="the demo data root (medood data demo)")
    p.add_argument("--tasks", nargs="*", default=list(BUNDLES))
    p.add_argument("--repeats", type=int, default=9, help="interleaved timing pairs")
    args = p.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    res = run_mecam_bench(args.data, args.tasks, args.repeats)
    write_page(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
