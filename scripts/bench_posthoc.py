"""Benchmark the post-hoc OOD detectors: scoring overhead, streaming fit cost, and quality on the demo tasks.

Writes ``docs/benchmarks/posthoc.json`` and ``posthoc.md`` (``--out``):

* ``overhead_all_over_forward``: one backbone forward over ``--overhead-images`` images (batch 64, 2D, the NERO
  bundle's classifier at its 64x64 input) versus :func:`medood.detectors.posthoc.score_many` with every detector
  that shares the forward pass (all but those with ``needs_input_grad``, i.e. ODIN) on the same batches (median of
  ``--repeats`` runs after a warm-up). The detectors are every registered post-hoc detector
  (:func:`medood.engines.posthoc.build_detectors` with ``"all"``), loaded from the bundle's fitted
  ``models/detectors.pt``: a new detector joins the benchmark when it is registered and the bundle is refitted.
  ODIN needs its own forward-backward-forward per batch; its cost is reported separately (``odin_over_forward``).
* ``fit_seconds`` / ``fit_peak_mb``: fitting every detector that needs a fit on N = 1k, 10k, 100k synthetic
  feature vectors (D = the classifier's feature width, C classes, logits from its real head), streamed through
  ``partial_fit_features`` in batches of 1024, then ``finalize_fit``. Peak memory = the rise of the process's
  resident set (VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before the fit): it sees
  torch's native allocations, which tracemalloc does not.
* ``tasks``: the demo endoscopy task with the bundle's shipped classifier, and the pathology / dermoscopy demo
  sets with classifiers trained here (seeded, ``--epochs``), all detectors with default settings (nothing tuned
  on the OOD sets): ``{task: {ood_set: {detector: {auroc, fpr95, aupr_in, aupr_out}}}}``.

The measurements live in :mod:`medood.benchmark.posthoc_bench`, the page in :mod:`medood.benchmark.posthoc_page`.

Usage::

    .venv/bin/python scripts/bench_posthoc.py [--threads 1] [--tasks endoscopy pathology dermoscopy]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medood.benchmark.posthoc_bench import run_posthoc_bench
from medood.benchmark.posthoc_page import markdown
from medood.benchmark.report import write_page
from medood.benchmark.script import add_common_arguments, render_only, start

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, ROOT / "docs" / "benchmarks" / "posthoc.json")
    p.add_argument("--work", type=Path, default=Path("/tmp/medood_bench_posthoc"), help="demo data, models, results")
    p.add_argument("--overhead-images", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--plateau", type=int, default=300000, help="one more N showing the memory plateau (0: none)")
    p.add_argument("--tasks", nargs="*", default=["endoscopy", "pathology", "dermoscopy"])
    p.add_argument("--epochs", type=int, default=30, help="training epochs of the non-endoscopy classifiers")
    args = p.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    res = run_posthoc_bench(args.work, args.overhead_images, args.repeats, args.sizes, args.plateau, args.tasks,
                            args.epochs)  # fmt: skip
    write_page(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
