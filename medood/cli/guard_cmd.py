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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood guard``."""
    p = sub.add_parser(
        "guard",
        help="add an OOD score and flag to an existing MONAI bundle (no retraining)",
        description="Fit a feature-map OOD detector (spectral signatures by default) on the forward pass of an "
        "existing MONAI bundle (model-zoo layout: configs/inference.json|yaml, models/model.pt) over in-distribution "
        "cases, set its threshold on in-distribution validation cases at --false-alarm-rate, and write a companion "
        "bundle (configs and the detector's fitted buffers only). Running the companion with python -m monai.bundle "
        "run runs the original network once per case and writes the original outputs unchanged plus scores.csv "
        "(case,score,flagged; higher = more OOD) and guard.json.",
    )
    p.add_argument("bundle", help="the original bundle folder")
    p.add_argument("--datalist", required=True, help="JSON list of in-distribution cases, or a dict of lists")
    p.add_argument("--out", required=True, help="the companion bundle folder to write")
    p.add_argument("--detector", default="spectral", help="a fitted feature-map detector (default: spectral)")
    p.add_argument("--layers", nargs="+", help="module names to hook (default: the deepest encoder stages)")
    p.add_argument("--n-stages", type=int, default=2, help="encoder stages hooked by default (default: 2)")
    p.add_argument("--false-alarm-rate", type=float, default=0.05, help="ID validation cases flagged (default: 0.05)")
    p.add_argument("--detector-arg", nargs="+", default=[], metavar="KEY=VALUE", help="detector options (JSON values)")
    p.add_argument("--fit-key", default="training", help="list of the data list to fit on (default: training)")
    p.add_argument("--val-key", default="validation", help="validation list; absent: 20%% of the fit list, seeded")
    p.add_argument("--config", help="the inference config, relative to the bundle (default: configs/inference.*)")
    p.add_argument("--ckpt", help="the network weights (default: <bundle>/models/model.pt)")
    p.add_argument("--network-id", default="network", help="config id of the network (default: network)")
    p.add_argument("--evaluator-id", default="evaluator", help="config id of the evaluator (default: evaluator)")
    p.add_argument("--image-key", default="image", help="data key of the image (default: image)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out split (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the companion bundle."""
    from medood.engines.guard import build_guard

    extra = {}
    for item in args.detector_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--detector-arg takes KEY=VALUE, got {item!r}")
        extra[key] = _value(value)
    out = build_guard(
        args.bundle, args.datalist, args.out, detector=args.detector, layers=args.layers, n_stages=args.n_stages,
        false_alarm_rate=args.false_alarm_rate, detector_args=extra, config=args.config, ckpt=args.ckpt,
        network_id=args.network_id, evaluator_id=args.evaluator_id, image_key=args.image_key, fit_key=args.fit_key,
        val_key=args.val_key, seed=args.seed,
    )  # fmt: skip
    logger.info("companion bundle written to %s", out)
    return 0
