"""Heatmap-OOD variants of the official code, trained on a bundle's data and scored on VALIDATION OOD only; a choice.

For each task (pathology, endoscopy: the 2-D heatmap bundles), on the bundle's own frozen classifier
(``models/classifier.pt``) and decoder training data (its ``train.yaml``: ID training images, corruptions of them,
the other-organ sample), every variant of :data:`medood.benchmark.heatmap_variants.VARIANTS` is trained with the
SAME epoch budget per decoder (``--epochs``), ``--seeds`` times (seeds 0..N-1: initialisation, corruptions,
training order; one training run is cheap in memory: the bundles' file pipeline is what costs minutes):

* ``default``: the bundle's detector (one decoder, images in [0, 1] in the loss);
* ``loss_range``: ``loss_input_range: [0, 1]``: the loss and its (1 + 5|t|) weight computed in [-1, 1] (official);
* ``multi_layer``: ``feature_layers: [layer3]``: the pooled ``layer3`` output joins ``z`` (pooled ``layer4``),
  the classifier's last two stages (the official ``fw_layers = 3`` feeds the same stages, unpooled, into its
  decoder);
* ``ensemble5``: ``n_decoders: 5`` (official): five decoders, maps averaged. Its decoder 0 is exactly the
  ``default`` decoder of the same seed (same initialisation, data and order; checked by
  ``tests/benchmark/test_heatmap_variants.py`` and on every validation case here), so the default is read from it.

Scored on the bench's ID validation images (``id_val``) against the VALIDATION OOD family only (``ood_val`` sets,
corruptions of ID validation images), never a test OOD kind. The validation family's corruptions (``shuffle``,
``spike``) are also among the bundles' auxiliary training corruptions: they are **held out of the decoder training
of every variant here** (otherwise the validation sets would be the training data's kind), so every variant trains
on the bundle's data less those two corruptions.

Rule, fixed before the measurement (:func:`medood.benchmark.heatmap_variants.choose_variant`; a 1-epoch timing
try had shown single runs of the default spread widely, so the rule pairs seeded runs): a variant replaces the
default only if (1) the paired case-bootstrap 95 % interval of its mean validation AUROC minus the default's
(averaged over the validation OOD sets and the runs, run r against run r) lies entirely above 0 and (2) the
difference is positive in every run but at most one. Among several, the highest mean AUROC.

The run and the page: :mod:`medood.benchmark.heatmap_variant_choice`. Writes
``docs/benchmarks/heatmap_variants.{json,md}`` (the page generated from the JSON)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/choose_heatmap_variant.py --epochs 30
    python scripts/choose_heatmap_variant.py --render          # the page again from the JSON
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medood.benchmark.heatmap_variant_choice import BUNDLES, markdown, run_task
from medood.benchmark.heatmap_variants import VARIANTS, choose_variant
from medood.benchmark.script import add_common_arguments, docstring_rule, render_only, run_choice, start

log = logging.getLogger("choose_heatmap_variant")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", type=Path, default=Path("/tmp/medood_benchmark/bench"))
    ap.add_argument("--tasks", nargs="+", choices=sorted(BUNDLES), default=sorted(BUNDLES))
    ap.add_argument("--epochs", type=int, default=30, help="epochs of every decoder (default: the bundles' 30)")
    ap.add_argument("--epochs-note", default="the bundles' budget; the official code trains 150")
    ap.add_argument("--seeds", type=int, default=5, help="training runs of every variant (seeds 0..N-1)")
    ap.add_argument("--n-boot", type=int, default=1000)
    add_common_arguments(ap, ROOT / "docs" / "benchmarks" / "heatmap_variants.json", threads=1)
    args = ap.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    header = {
        "epochs": args.epochs,
        "epochs_note": args.epochs_note,
        "n_boot": args.n_boot,
        "seeds": args.seeds,
        "variants": "; ".join(f"{k} {dict(v) or '(bundle settings)'}" for k, v in VARIANTS.items()),
        "rule": docstring_rule(choose_variant).replace("``", "`"),
    }
    result = run_choice(
        args.out,
        "choose_heatmap_variant.py",
        header,
        args.tasks,
        lambda t: run_task(t, args.bench_dir, args.epochs, args.seeds, args.n_boot),
        markdown,
    )
    log.info("chosen: %s", {k: v["chosen"] for k, v in result["tasks"].items()})


if __name__ == "__main__":
    main()
