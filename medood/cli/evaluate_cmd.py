"""``medood evaluate``: OOD metrics from a scores CSV and anomaly-segmentation metrics from map/mask folders."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from medood.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

_EPILOG = """\
image level (--scores):
  scores.csv has a header with columns case,score (or ood_score) and optionally label (1 = OOD, 0 = ID); this
  is what medood's OODResultWriter writes. Its flagged column is a thresholded prediction and is ignored.
  labels.csv has case,label (or case,is_ood); labels may be 0/1, true/false or id/ood. Labels may come from
  either file; if both carry them they must agree. Every scored case needs a label and every labelled case a
  score. Reported: AUROC, AUPR-In (ID positive), AUPR-Out (OOD positive), fpr95 = FPR on OOD images at 95 % TPR
  on ID images (what OpenOOD / NERO and most papers call FPR95) and fpr95_ood = FPR on ID images at 95 % TPR on
  OOD images (OOD positive). Higher score = more OOD.

voxel level (--maps / --masks):
  every <case>_anomaly_map.nii.gz (or .nii) in --maps is paired with the first existing file in --masks among
  <case>_lesion, <case>, <case>_seg, <case>_label (.nii.gz, then .nii); foreground masks in --foreground are
  <case>_brainmask, <case>_brain_mask, <case>_foreground, <case>_mask, <case>. Mask voxels > 0.5 are lesion /
  foreground. Reported: pixel AP and AUROC over all voxels of all cases pooled (as MOOD), the oracle best Dice
  and its threshold (chosen on these labels: an upper bound), Dice of map >= --threshold (pooled and mean per
  lesion case; take the threshold from healthy validation data), and slice AP / AUROC with --slice-axis.

exit status: 0 on success, 2 on bad input (the message names the file and the problem).
"""

#: What the numbers in the JSON mean (written next to them so tables can quote the convention).
CONVENTIONS = {
    "score": "higher = more OOD / more anomalous; OOD images and lesion voxels are the positive class",
    "fpr95": "FPR on OOD images at the threshold accepting 95% of ID images (ID positive; OpenOOD/NERO FPR95)",
    "fpr95_ood": "FPR on ID images at the threshold flagging 95% of OOD images (OOD positive)",
    "aupr_in": "average precision with ID positive on negated scores",
    "aupr_out": "average precision with OOD positive",
    "pixel_ap": "average precision over all (sampled) voxels of all cases pooled, lesion positive (MOOD)",
    "best_dice": "oracle: best pooled Dice over thresholds chosen on the test labels (upper bound)",
    "dice": "pooled Dice of map >= threshold; dice_mean_per_case averages cases that contain a lesion",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="compute OOD / anomaly-segmentation metrics from saved scores and maps",
        description="Compute image-level OOD metrics from a scores CSV and/or voxel-level anomaly-segmentation\n"
        "metrics from a folder of anomaly maps and a folder of lesion masks. Prints a table to stdout and\n"
        "writes the numbers with their conventions as JSON (--out).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    img = p.add_argument_group("image level")
    img.add_argument(
        "--scores", type=Path, metavar="CSV", help="CSV with columns case,score[,label] (higher = more OOD)"
    )
    img.add_argument("--labels", type=Path, metavar="CSV", help="CSV with columns case,label (1 = OOD, 0 = ID)")
    img.add_argument("--tpr", type=float, default=0.95, help="TPR of the FPR metrics (default: 0.95)")
    vox = p.add_argument_group("voxel level")
    vox.add_argument("--maps", type=Path, metavar="DIR", help="folder of <case>_anomaly_map.nii.gz files")
    vox.add_argument("--masks", type=Path, metavar="DIR", help="folder of lesion masks (see the pairing rules below)")
    vox.add_argument("--foreground", type=Path, metavar="DIR", help="optional folder of foreground (brain) masks")
    vox.add_argument(
        "--threshold", type=float, metavar="T", help="map threshold for Dice (from healthy validation data)"
    )
    vox.add_argument(
        "--max-voxels",
        type=int,
        metavar="N",
        help="random voxels kept per case for AP / best Dice (default: all; DISYRE uses 10000)",
    )
    vox.add_argument("--seed", type=int, default=0, help="seed of the voxel sub-sampling (default: 0)")
    vox.add_argument(
        "--n-thresholds", type=int, metavar="K", help="best Dice over this many quantile thresholds (default: exact)"
    )
    vox.add_argument(
        "--slice-axis", type=int, metavar="AXIS", help="also compute slice-level AP/AUROC along this voxel axis"
    )
    vox.add_argument(
        "--slice-reduction",
        choices=("max", "mean", "topk"),
        default="max",
        help="how a slice's voxels become its score (default: max)",
    )
    p.add_argument("--out", type=Path, metavar="JSON", help="write the metrics as JSON to this file (atomically)")
    p.set_defaults(func=run)


def _table(results: dict[str, Any]) -> str:
    rows = [("level", "metric", "value")]
    for level in ("image", "voxel"):
        if level not in results:
            continue
        for name, value in results[level]["metrics"].items():
            rows.append((level, name, "nan" if math.isnan(value) else f"{value:.4f}"))
        counts = ("n_id", "n_ood") if level == "image" else ("n_cases", "n_voxels")
        rows.extend((level, c, str(results[level][c])) for c in counts)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "".join(f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c.rjust(widths[2])}\n" for a, b, c in rows)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table to stdout and write the JSON; returns the exit status."""
    from medood.metrics.files import evaluate_map_folders, evaluate_scores

    if args.scores is None and args.maps is None:
        raise ValueError("nothing to evaluate: give --scores (image level) and/or --maps with --masks (voxel level)")
    if args.labels is not None and args.scores is None:
        raise ValueError("--labels needs --scores")
    if args.maps is not None and args.masks is None:
        raise ValueError("--maps needs --masks (the lesion masks to compare with)")
    if args.masks is not None and args.maps is None:
        raise ValueError("--masks needs --maps")
    results: dict[str, Any] = {}
    if args.scores is not None:
        results["image"] = evaluate_scores(args.scores, args.labels, tpr=args.tpr)
        results["image"].update(scores=str(args.scores), labels=None if args.labels is None else str(args.labels))
    if args.maps is not None:
        results["voxel"] = evaluate_map_folders(
            args.maps,
            args.masks,
            foreground_dir=args.foreground,
            threshold=args.threshold,
            max_voxels=args.max_voxels,
            seed=args.seed,
            n_thresholds=args.n_thresholds,
            slice_axis=args.slice_axis,
            slice_reduction=args.slice_reduction,
        )
        results["voxel"].update(maps=str(args.maps), masks=str(args.masks))
    results["conventions"] = CONVENTIONS
    sys.stdout.write(_table(results))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(results, indent=2, allow_nan=True) + "\n")
        logger.info("wrote %s", args.out)
    return 0
