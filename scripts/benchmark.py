"""The evidence page: ``docs/results.md``, ``results.json``, ``results_scores.csv.gz`` and ``results_plots/``.

Thin entry point of :func:`medood.benchmark.run_benchmark` (the sets, the runner, the intervals and the writers
live in ``medood/benchmark/`` and ``medood/data/demo/bench.py``)::

    python scripts/benchmark.py --quick                  # the committed page
    python scripts/benchmark.py --full [--only pathology] [--data DIR]

``--data DIR`` runs the same page on real datasets instead of the bench sets (``medood.benchmark.real``; the
tables of ID / OOD sets per layout in its docstring and the README), one folder per task:

    DIR/pathology/pathmnist_64.npz [+ dermamnist.npz chestmnist.npz ...]   # other .npz: far-OOD (test splits)
    DIR/dermoscopy/ISIC_2019_Training_Input/ + ISIC_2019_Training_GroundTruth.csv   # or HAM10000_metadata.csv
    DIR/endoscopy/kvasir-dataset-v2/<class>/*.jpg                              # or GastroVision/<class>/
    DIR/brain_mri/IXI-T1/ IXI-T2/ [IXI-PD/] + MICCAI_BraTS2020_TrainingData/   # or Task01_BrainTumour/

    python scripts/benchmark.py --data DIR --only pathology --work /tmp/real
    python scripts/benchmark.py --data DIR --only dermoscopy endoscopy --docs /tmp/real_page
    python scripts/benchmark.py --data DIR --only brain_volume_ood brain_anomaly_segmentation --full

A task folder may also hold a bench ``manifest.json`` or ``train|val|test/<class>/`` + ``ood_near|ood_far/<kind>/``
folders; 2-D task folders take extra test OOD sets from ``ood_near|ood_far/<kind>/``. A real-data page goes to
``WORK/page/`` unless ``--docs`` says otherwise (``docs/`` holds the committed bench page).
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
    p.add_argument("--data", type=Path, help="real datasets (DIR/<task folder>/, layouts above) instead of bench sets")
    p.add_argument("--epochs", type=int, help="host classifier epochs (default: 10 quick, 30 full)")
    p.add_argument("--work", type=Path, default=Path("/tmp/medood_benchmark"), help="bench sets and bundle runs")
    p.add_argument("--docs", type=Path, help="where results.* go (default: docs/; with --data: WORK/page/)")
    p.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate of the flags (default 0.05)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    docs = args.docs or (ROOT / "docs" if args.data is None else args.work / "page")
    payload = run_benchmark(docs, args.work, args.data, args.only, quick=not args.full, alpha=args.alpha,
                  command="python scripts/benchmark.py " + " ".join(sys.argv[1:]), epochs=args.epochs)  # fmt: skip
    if not payload["tasks"]:  # nothing ran (e.g. every --data folder refused): say so by the exit status
        logging.error("no task ran: %s", "; ".join(payload["not_done"]))
        sys.exit(1)


if __name__ == "__main__":
    main()
