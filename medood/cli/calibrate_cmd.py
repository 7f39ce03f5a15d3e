"""``medood calibrate``: re-record a bundle's thresholds from a site's own in-distribution scans."""

from __future__ import annotations

import argparse
import json
import logging

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood calibrate``."""
    p = sub.add_parser(
        "calibrate",
        help="re-record a bundle's thresholds on your own in-distribution scans (no retraining)",
        description="A threshold holds only for data like its calibration set: at a new site (scanner, stain, "
        "camera) run the bundle's shipped weights on a handful of your own in-distribution scans and set the flag "
        "threshold with the split-conformal rule: the ceil((n+1)(1-alpha))-th smallest of the n ID scores, so a new "
        "ID scan is flagged with probability at most alpha. Needs n >= 1/alpha - 1 scans (refused otherwise). "
        "Writes thresholds.json, calibration.pt and id_scores.csv into --out (default "
        "<bundle>/models/site_calibration), never over existing files.",
    )
    p.add_argument("--bundle", required=True, help="the bundle folder")
    p.add_argument("--id", required=True, dest="id_dir", help="folder of your in-distribution scans")
    p.add_argument("--alpha", type=float, default=0.05, help="per-image false-alarm rate (default: 0.05)")
    p.add_argument("--map-alpha", type=float, default=0.005, help="per-voxel rate of the mask threshold (0.005)")
    p.add_argument("--out", help="output folder (default: <bundle>/models/site_calibration; never overwritten)")
    p.add_argument("--config", default="inference.yaml", help="inference config in configs/ (inference.yaml)")
    p.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides (JSON values)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Calibrate the bundle and print what it wrote."""
    from medood.engines.calibrate import calibrate_bundle
    from medood.utils.conformal import min_calibration_size

    overrides = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--override takes KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    logger.info("alpha %g needs at least %d in-distribution scans", args.alpha, min_calibration_size(args.alpha))
    try:
        records = calibrate_bundle(
            args.bundle, args.id_dir, alpha=args.alpha, out=args.out, map_alpha=args.map_alpha, config=args.config,
            overrides=overrides,
        )  # fmt: skip
    except FileExistsError as err:  # a one-line error like the others (medood.cli.main)
        raise ValueError(str(err)) from None
    for name, rec in records.items():
        rule = rec["score_rule"]
        print(
            f"{name}: flag score > {rec['score_threshold']:.6g} (split-conformal, alpha {rule['alpha']:g}, "
            f"n {rule['n']}, expected false-alarm rate {rule['expected_rate']:.3g})"
        )
    return 0
