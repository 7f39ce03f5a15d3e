"""Diagnose spectral signatures on the **validation** OOD family and choose their setting there (issue 23 item 2).

Never reads a test OOD kind. Host: the shipped multi-task network of ``bundles/spectral_brain_mri_ood_classification``.

* Signature bank: the demo training data the bundle fits on (brain: every training volume at every contrast;
  pathology: the training patches), one forward pass each; the singular values of every encoder stage are kept.
* Validation sets (``medood data bench``'s manifest, role ``ood_val``): brain ``id_val`` (60 healthy volumes) against
  ``val_shuffle`` and ``val_gibbs`` (corruptions of ID validation volumes, kinds no test set uses); pathology
  ``id_val`` against ``val_shuffle`` and ``val_spike``.
* Grid: which layers (each encoder stage alone, the two / three deepest, all four), how many singular values are
  kept (all, or the 4 / 8 / 16 largest), the normalisation of the log spectrum (``l2`` the paper's, ``ratio``,
  ``none``) and the combination of several layers (``mean`` / ``normalized``); distance ``min`` (the paper's).
  Per setting: the AUROC of each validation kind and their mean (brain: the contrasts pooled, as the benchmark's
  brain task; per contrast too).
* Signature bank over both domains: the brain validation AUROCs of the chosen setting with a brain-only bank and
  with the brain + pathology bank; the pathology validation AUROCs with a pathology-only and the joint bank; how
  often the nearest training signature of an ID validation image is of its own domain.
* Choice: among the settings within ``--margin`` (0.005) of the highest mean brain validation AUROC, the bundle's
  current setting if it is one of them, else the one closest to the paper's signature (fewest of: normalisation
  other than ``l2``, fewer singular values, ``normalized`` combination; then the highest AUROC).

The grid, the rule and the domain check: :mod:`medood.benchmark.spectral_diagnosis`; the page:
:mod:`medood.benchmark.spectral_diagnosis_page`. Writes ``docs/benchmarks/spectral_diagnosis.json`` and ``.md``.
Usage (about 2 min on 1 core)::

    medood data bench --out /tmp/medood_benchmark/bench --only brain_mri pathology   # if not built yet
    OMP_NUM_THREADS=1 .venv/bin/python scripts/diagnose_spectral.py --bench-dir /tmp/medood_benchmark/bench
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medood.benchmark.report import write_page
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.benchmark.spectral_diagnosis import run_spectral_diagnosis
from medood.benchmark.spectral_diagnosis_page import render

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("diagnose_spectral")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", type=Path, default=Path("/tmp/medood_benchmark/bench"))
    ap.add_argument("--brain-dir", type=Path, default=ROOT / "demo_data" / "brain_mri")
    ap.add_argument("--pathology-dir", type=Path, default=ROOT / "demo_data" / "pathology")
    ap.add_argument("--margin", type=float, default=0.005)
    add_common_arguments(ap, ROOT / "docs" / "benchmarks" / "spectral_diagnosis.json")
    args = ap.parse_args()
    args.out = args.out.with_suffix(".json")  # an --out without the suffix, as the script once took, still works
    if render_only(args, render):
        return
    start(args)  # logging, --threads, torch.manual_seed(0)
    result = run_spectral_diagnosis(args.bench_dir, args.brain_dir, args.pathology_dir, args.margin)
    write_page(args.out, result, render(result), indent=1)
    log.info("%.0f s", result["seconds"])


if __name__ == "__main__":
    main()
