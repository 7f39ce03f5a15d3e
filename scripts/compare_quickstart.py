"""Compare a MIM-bundle quickstart run folder with a saved baseline: maps, masks and scores to float tolerance.

    python scripts/compare_quickstart.py BASELINE_DIR RUN_DIR [--atol 1e-5]

Prints the maximum absolute differences as JSON and exits 1 when any exceeds ``--atol`` or a file is missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def compare(base: Path, run: Path) -> dict[str, float | int | list[str]]:
    """Maximum absolute differences between the two run folders' maps, masks, scores and slice scores."""
    out: dict[str, float | int | list[str]] = {"missing": []}
    missing: list[str] = []
    d_map = d_seg = 0.0
    n = 0
    for p in sorted(base.glob("*_anomaly_map.nii.gz")) + sorted(base.glob("*_anomaly_seg.nii.gz")):
        q = run / p.name
        if not q.is_file():
            missing.append(p.name)
            continue
        a, b = np.asarray(nib.load(p).dataobj, np.float64), np.asarray(nib.load(q).dataobj, np.float64)
        if a.shape != b.shape:
            missing.append(f"{p.name} (shape {a.shape} vs {b.shape})")
            continue
        d = float(np.abs(a - b).max())
        if "_seg" in p.name:
            d_seg = max(d_seg, float(np.abs(a - b).sum()))  # voxels that differ
        else:
            d_map = max(d_map, d)
        n += 1
    base_s, run_s = _rows(base / "scores.csv"), _rows(run / "scores.csv")
    missing += [f"scores.csv:{c}" for c in base_s if c not in run_s]
    common = [c for c in base_s if c in run_s]
    d_score = max((abs(float(base_s[c]["score"]) - float(run_s[c]["score"])) for c in common), default=0.0)
    d_flag = sum(base_s[c].get("flagged") != run_s[c].get("flagged") for c in base_s if c in run_s)
    with (base / "slice_scores.csv").open() as f:
        bs = {(r["case"], r["axis"], r["slice"]): float(r["score"]) for r in csv.DictReader(f)}
    with (run / "slice_scores.csv").open() as f:
        rs = {(r["case"], r["axis"], r["slice"]): float(r["score"]) for r in csv.DictReader(f)}
    d_slice = max((abs(v - rs[k]) for k, v in bs.items() if k in rs), default=0.0)
    missing += [f"slice_scores.csv:{k}" for k in bs if k not in rs][:5]
    tb, tr = json.loads((base / "thresholds.json").read_text()), json.loads((run / "thresholds.json").read_text())
    d_thr = max(abs(float(tb[k]) - float(tr[k])) for k in ("map_threshold", "score_threshold"))
    out.update(
        files=n, max_map_diff=d_map, max_seg_voxels_diff=d_seg, max_score_diff=d_score, flag_diffs=d_flag,
        max_slice_score_diff=d_slice, max_threshold_diff=d_thr, missing=missing,
    )  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--atol", type=float, default=1e-5)
    a = ap.parse_args()
    res = compare(a.baseline, a.run)
    print(json.dumps(res, indent=2))
    bad = res["missing"] or res["flag_diffs"] or res["max_seg_voxels_diff"]
    bad = bad or max(float(res[k]) for k in ("max_map_diff", "max_score_diff", "max_slice_score_diff")) > a.atol  # type: ignore[arg-type]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
