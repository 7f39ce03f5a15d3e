"""Heatmap-OOD per stage on VALIDATION data (issue 23): decoder response, the target's scale, the auxiliary mix.

For each task (pathology, endoscopy: the 2-D heatmap bundles), decoders are trained as
``scripts/choose_heatmap_variant.py`` trains them (the bundle's shipped detector options and ``train.yaml`` data, the
validation family's corruptions held out, ``--epochs`` per decoder), ``--seeds`` times for each auxiliary OOD mix of
:data:`medood.benchmark.heatmap_diagnosis.MIXES` (corruptions only, other organs only, both = the bundles' mix), and
scored on the bundle's ID training images, its held-out ``val`` split, the bench ``id_val`` images and the
validation OOD family only (never a test OOD kind). The figures and the verdict are
:mod:`medood.benchmark.heatmap_diagnosis`; the page :mod:`medood.benchmark.heatmap_diagnosis_page`.

Writes ``docs/benchmarks/heatmap_diagnosis.{json,md}``::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/diagnose_heatmap.py --seeds 5
    python scripts/diagnose_heatmap.py --render          # the page again from the JSON
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from medood.benchmark.heatmap_diagnosis import GAP_AUROC, GAP_RATIO, PAINT_RATIO, diagnose_task
from medood.benchmark.heatmap_diagnosis_page import markdown
from medood.benchmark.heatmap_variants import choose_variant
from medood.benchmark.script import add_common_arguments, docstring_rule, render_only, run_choice, start

log = logging.getLogger("diagnose_heatmap")
ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"pathology": "heatmap_pathology_ood_classification", "endoscopy": "heatmap_endoscopy_ood_classification"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", type=Path, default=Path("/tmp/medood_benchmark/bench"))
    ap.add_argument("--data-dir", type=Path, default=ROOT / "demo_data", help="the bundles' data (<dir>/<task>)")
    ap.add_argument("--tasks", nargs="+", choices=list(BUNDLES), default=list(BUNDLES))
    ap.add_argument("--epochs", type=int, default=30, help="epochs of every decoder (default: the bundles' 30)")
    ap.add_argument("--seeds", type=int, default=5, help="training runs of every arm (seeds 0..N-1)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--n-decoders", type=int, default=None,
                    help="decoders per run (default: the bundle's; 1 = one member of a shipped ensemble)")  # fmt: skip
    add_common_arguments(ap, ROOT / "docs" / "benchmarks" / "heatmap_diagnosis.json", threads=1)
    args = ap.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    override = {} if args.n_decoders is None else {"n_decoders": args.n_decoders}

    def run_task(task: str) -> dict[str, Any]:
        out = diagnose_task(ROOT / "bundles" / BUNDLES[task], args.bench_dir / task, args.data_dir / task,
                            args.epochs, args.seeds, args.n_boot, **override)  # fmt: skip
        log.info("%s: limiting %s, arm %s", task, out["limiting"]["stages"], out["chosen"])
        return out

    header = {
        "epochs": args.epochs, "seeds": args.seeds, "n_boot": args.n_boot, "n_decoders": args.n_decoders,
        "thresholds": {"gap_ratio": GAP_RATIO, "gap_auroc": GAP_AUROC, "paint_ratio": PAINT_RATIO},
        "rule": docstring_rule(choose_variant),
    }  # fmt: skip
    run_choice(args.out, Path(__file__).name, header, args.tasks, run_task, markdown)


if __name__ == "__main__":
    main()
