"""The evidence page: ``docs/results.md``, ``results.json``, ``results_scores.csv.gz`` and ``results_plots/``.

Thin entry point of :func:`medood.benchmark.run_benchmark` (the sets, the runner, the intervals and the writers
live in ``medood/benchmark/`` and ``medood/data/demo/bench.py``)::

    python scripts/benchmark.py --quick                  # the committed page
    python scripts/benchmark.py --full [--only pathology] [--data DIR]

``--data DIR`` reads real datasets instead of the bench sets: ``DIR/<task>/`` with a bench ``manifest.json`` or
in the class-folder layout (``train|val|test/<class>/``, ``ood_near|ood_far/<kind>/``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medood.benchmark import TASKS, run_benchmark

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="300 bootstrap resamples, fewer shift images (default)")
    mode.add_argument("--full", action="store_true", help="1000 resamples, 30-epoch hosts, all shift images")
    p.add_argument("--only", nargs="+", choices=sorted(TASKS), help="tasks to run (default: all)")
    p.add_argument("--data", type=Path, help="real datasets (DIR/<task>/) instead of the bench sets")
    p.add_argument("--work", type=Path, default=Path("/tmp/medood_benchmark"), help="bench sets and bundle runs")
    p.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results.* go (default: docs/)")
    p.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate of the flags (default 0.05)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_benchmark(args.docs, args.work, args.data, args.only, quick=not args.full, alpha=args.alpha,
                  command="python scripts/benchmark.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
