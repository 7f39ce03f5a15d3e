"""Benchmark ``medood guard`` over the MONAI model zoo's published inference configs; writes docs/benchmarks/guard.json.

For every bundle of the compatibility matrix (``tests/helpers/model_zoo.py``: the zoo's own configs under
``tests/data/model_zoo``, tiny overrides where stated, seeded random weights, synthetic cases), in one process:

* the guard is fitted (``medood guard``, split-conformal threshold at ``--alpha`` on the validation cases);
* the original and the companion run the model-zoo way (``monai.bundle run <run_id> --config_file ...
  --bundle_root ...``, in this process) on the same test cases, alternating, ``--repeats`` times: the run-time
  ratio companion / original is the ratio of the medians (whole ``run`` calls: config parsing, loading, inference,
  writing);
* ``outputs_identical``: every file the original writes is byte-identical in the companion's output folder;
* ``auroc_modality_shift``: AUROC of the shifted cases (CT <-> MR, endoscopy / H&E -> grey radiograph; positive)
  against the in-distribution test cases, from the companion's ``scores.csv``. The networks have random weights:
  this shows that the hooks, the fit and the threshold work end to end, not how well a trained network's features
  separate real data;
* ``id_false_alarm_rate``: the fraction of in-distribution test cases flagged (requested: ``--alpha``).

Usage::

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_guard.py [--repeats 3] [--only spleen_ct_segmentation]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medood.utils.io import atomic_write_text  # noqa: E402
from tests.helpers.model_zoo import CASES, run_matrix_case  # noqa: E402

logger = logging.getLogger("bench_guard")


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "guard.json"))
    p.add_argument("--repeats", type=int, default=3, help="alternating original / companion runs (default: 3)")
    p.add_argument("--n-fit", type=int, default=6)
    p.add_argument("--n-val", type=int, default=4)
    p.add_argument("--n-test", type=int, default=4, help="in-distribution and shifted test cases each (default: 4)")
    p.add_argument("--alpha", type=float, default=0.2)
    p.add_argument("--only", nargs="+", help="bundle names (default: all)")
    p.add_argument("--merge", action="store_true", help="update the bundles of an existing --out file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    bundles: dict[str, object] = json.loads(out.read_text())["bundles"] if args.merge and out.is_file() else {}
    start = time.perf_counter()
    for name in args.only or list(CASES):
        case = CASES[name]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"guard_{name}_") as tmp:
            r = run_matrix_case(case, Path(tmp), args.n_fit, args.n_val, args.n_test, args.alpha, args.repeats)
        id_cases = [c for c in r.scores if "ood" not in c]
        bundles[name] = {
            "network": case.family,
            "tiny_network_override": case.tiny_network,
            "overrides": case.overrides,
            "layers": r.layers,
            "modality_shift": case.shift,
            "n_cases": len(r.scores),
            "outputs_identical": r.identical,
            "n_output_files": len(r.outputs),
            "runtime_ratio_companion_over_original": round(r.ratio, 3),
            "seconds_original": [round(s, 3) for s in r.seconds_original],
            "seconds_companion": [round(s, 3) for s in r.seconds_companion],
            "auroc_modality_shift": round(r.auroc(), 4),
            "id_false_alarm_rate": sum(r.flagged[c] for c in id_cases) / len(id_cases),
            "threshold_rule": r.guard_info["threshold_rule"],
        }
        print(
            f"{name}: ratio {r.ratio:.2f}, identical {r.identical}, AUROC {r.auroc():.3f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    record = {
        "what": "medood guard on the MONAI model zoo's published inference configs (tests/data/model_zoo), "
        "seeded random weights, synthetic cases; see scripts/bench_guard.py",
        "model_zoo_commit": "dfae206df112837d817e78d3727c9f32b3b52e82",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "only", "merge")},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1, "device": "cpu"},
        "seconds_this_invocation": round(time.perf_counter() - start, 1),  # --merge: only the bundles run now
        "bundles": bundles,
    }
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
