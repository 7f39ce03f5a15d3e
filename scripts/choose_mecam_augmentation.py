"""MECAM's AutoAugment-like policy on VALIDATION data: trained with and without it, scored, and a choice (issue 23).

For each 2-D MECAM bundle (pathology first, then dermoscopy), the bundle's classifier is trained with
``autoaugment: true`` by EXACTLY the shipped recipe otherwise: the bundle's own ``inference.yaml`` + ``train.yaml``
through ``python -m monai.bundle run`` (epochs, optimiser, data ``demo_data/<task>``, as the bundle's
``metadata.json`` ``training.command``), with only ``autoaugment``, ``seed`` and the output folders overridden
(every output goes to ``--runs-dir``; the shipped ``models/`` is never written). The ``autoaugment: false`` arm of
seed 0 is the shipped ``models/model.pt`` (trained by that command); further seeds of both arms are trained the
same way. Each model is scored with MECAM (the bundle's inference settings: preprocessing, exits, CAM grid) on the
bench's ID validation images (``id_val``) against the VALIDATION OOD family only (``ood_val`` sets), never a test
OOD kind: AUROC / FPR95 per set and seed with case-level bootstrap 95 % intervals, the paired (seed against seed)
difference of the mean AUROC over the validation sets, and the final exit's accuracy on ``id_val``.

Rule, fixed before the measurement (:func:`medood.benchmark.mecam_augmentation.choose_autoaugment`): the policy
becomes the default only if (1) the paired case-bootstrap 95 % interval of its mean validation AUROC minus the
default's (averaged over the validation OOD sets and the seeds, seed against seed) lies entirely above 0, and
(2) its ID validation accuracy is not lower by more than its interval: the upper end of the paired 95 % interval
of the accuracy difference is at least 0. The shipped weights are not retrained here: a win is reported (bundle
README), the configs' default stays ``false`` until the lead decides.

The run and the page: :mod:`medood.benchmark.mecam_augmentation_choice`. Writes
``docs/benchmarks/mecam_augmentation.{json,md}`` (the page generated from the JSON)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/choose_mecam_augmentation.py --seeds 0 1
    python scripts/choose_mecam_augmentation.py --render          # the page again from the JSON
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medood.benchmark.mecam_augmentation import choose_autoaugment
from medood.benchmark.mecam_augmentation_choice import BUNDLES, markdown, run_task
from medood.benchmark.script import add_common_arguments, docstring_rule, render_only, run_choice, start

log = logging.getLogger("choose_mecam_augmentation")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", type=Path, default=Path("/tmp/medood_benchmark/bench"))
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/medood_mecam_augmentation"),
                    help="training runs (a run with train.json is reused, not retrained)")  # fmt: skip
    ap.add_argument("--tasks", nargs="+", choices=list(BUNDLES), default=list(BUNDLES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds of both arms (0: the shipped false)")
    ap.add_argument("--n-boot", type=int, default=1000)
    add_common_arguments(ap, ROOT / "docs" / "benchmarks" / "mecam_augmentation.json", threads=1)
    args = ap.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    header = {"seeds": args.seeds, "n_boot": args.n_boot, "rule": docstring_rule(choose_autoaugment)}
    result = run_choice(
        args.out,
        "choose_mecam_augmentation.py",
        header,
        args.tasks,
        lambda t: run_task(t, args.bench_dir, args.runs_dir, args.seeds, args.n_boot),
        markdown,
    )
    log.info("autoaugment wins: %s", {k: v["autoaugment_wins"] for k, v in result["tasks"].items()})


if __name__ == "__main__":
    main()
