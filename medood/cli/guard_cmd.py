"""``medood guard``: a companion bundle that adds an OOD score and flag to an existing MONAI bundle."""

from __future__ import annotations

import argparse
import json
import logging

logger = logging.getLogger(__name__)


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str], option: str) -> dict[str, object]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{option} takes KEY=VALUE, got {item!r}")
        out[key] = _value(value)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood guard``."""
    p = sub.add_parser(
        "guard",
        help="add an OOD score and flag to an existing MONAI bundle (no retraining)",
        description="Fit a feature-map OOD detector (spectral signatures by default) on the forward pass of an "
        "existing MONAI bundle (model-zoo layout: configs/inference.json|yaml, models/model.pt) over in-distribution "
        "cases (the layers are found through the bundle's own preprocessing and inferer), set the split-conformal "
        "threshold on in-distribution validation cases at --alpha, and write a companion bundle (configs, the "
        "detector's fitted buffers, links to the original's weights and scripts). Running the companion the "
        "model-zoo way (python -m monai.bundle run --config_file C/configs/inference.json --bundle_root C) runs the "
        "original network once per case and writes the original outputs unchanged plus scores.csv "
        "(case,score,flagged,image; higher = more OOD), thresholds.json, run.json and guard.json.",
    )
    p.add_argument("bundle", help="the original bundle folder")
    p.add_argument("--datalist", required=True, help="JSON list of in-distribution cases, or a dict of lists")
    p.add_argument("--out", required=True, help="the companion bundle folder to write")
    p.add_argument("--detector", default="spectral", help="a fitted feature-map detector (default: spectral)")
    p.add_argument("--layers", nargs="+", help="module names to hook (default: the deepest encoder stages)")
    p.add_argument("--n-stages", type=int, default=2, help="encoder stages hooked by default (default: 2)")
    p.add_argument(
        "--alpha", "--false-alarm-rate", dest="alpha", type=float, default=0.05,
        help="requested false-alarm rate on in-distribution cases (split-conformal; default: 0.05)",
    )  # fmt: skip
    p.add_argument(
        "--allow-small-calibration", action="store_true",
        help="proceed when the validation list is too small for --alpha (threshold = the largest validation score; "
        "the warning is recorded in guard.json); default: refuse, naming the cases needed",
    )  # fmt: skip
    p.add_argument(
        "--val-fraction", type=float, default=0.2,
        help="held-out validation fraction when the data list has no validation list (default: 0.2)",
    )  # fmt: skip
    p.add_argument("--detector-arg", nargs="+", default=[], metavar="KEY=VALUE", help="detector options (JSON values)")
    p.add_argument("--fit-key", default="training", help="list of the data list to fit on (default: training)")
    p.add_argument("--val-key", default="validation", help="validation list; absent: --val-fraction of the fit list")
    p.add_argument("--config", help="the inference config, relative to the bundle (default: configs/inference.*)")
    p.add_argument(
        "--ckpt", help="the network weights (default: what the config's CheckpointLoader loads, else models/model.pt)"
    )
    p.add_argument("--network-id", default="network", help="config id of the network (default: network)")
    p.add_argument("--evaluator-id", default="evaluator", help="config id of the evaluator (default: evaluator)")
    p.add_argument("--inferer-id", default="inferer", help="config id of the inferer (default: inferer)")
    p.add_argument(
        "--preprocessing-id", default="preprocessing", help="config id of the preprocessing (default: preprocessing)"
    )
    p.add_argument(
        "--override", nargs="+", default=[], metavar="ID=VALUE",
        help="config overrides used for fitting and written into the companion, as monai.bundle run --ID VALUE "
        "(JSON values), e.g. inferer#roi_size=[64,64,64]",
    )  # fmt: skip
    p.add_argument("--image-key", default="image", help="data key of the image (default: image)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out split (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the companion bundle."""
    from medood.engines.guard import build_guard

    out = build_guard(
        args.bundle, args.datalist, args.out, detector=args.detector, layers=args.layers, n_stages=args.n_stages,
        alpha=args.alpha, detector_args=_pairs(args.detector_arg, "--detector-arg"), config=args.config,
        ckpt=args.ckpt, network_id=args.network_id, evaluator_id=args.evaluator_id, inferer_id=args.inferer_id,
        preprocessing_id=args.preprocessing_id, image_key=args.image_key, fit_key=args.fit_key,
        val_key=args.val_key, val_fraction=args.val_fraction, allow_small_calibration=args.allow_small_calibration,
        overrides=_pairs(args.override, "--override"), seed=args.seed,
    )  # fmt: skip
    logger.info("companion bundle written to %s", out)
    return 0
