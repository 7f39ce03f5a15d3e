"""Per-stage diagnosis of MIM-OOD on the demo VALIDATION lesions (never the test set).

Which stage limits the end result? Measured on ``validation_lesion`` (lesioned twins of the validation subjects,
with lesion masks) and the healthy ``validation`` volumes, in the bundle's 2 mm model space unless said otherwise:

* token flagging (brain tokens of lesioned slices): AUROC / AP of the token detector's probabilities, of the
  in-painter's masked NLL and of the AR baseline's token NLL against lesion tokens (>= 25 % of the 4 x 4 footprint
  is lesion; also the any-pixel definition); recall / precision of the tokens actually flagged (configured
  thresholds and dilation) and the fraction of healthy brain tokens they flag;
* in-painter: all lesion tokens in-painted (true mask, dilated as configured): residual inside the lesion after
  in-painting vs the tokenizer's own reconstruction residual there, how much of the lesion contrast is healed
  (distance to the healthy twin), and how much healthy tissue it disturbs;
* tokenizer: healthy reconstruction-residual floor (p50 / p99 in the brain) vs the residual inside lesions;
* end result through the bundle's own pipeline (preprocessing, detector, Invertd, writer, calibration on the
  healthy validation volumes, ``medood.metrics.files.evaluate_outputs``) for each flagging (``atd``, ``nll``,
  ``union``) and ``oracle`` (the true lesion tokens, dilated, are in-painted: the upper bound of perfect flagging).

Appends an entry labelled ``--label`` to ``--out`` (JSON; an entry with the same label is replaced) and rewrites
the ``.md`` next to it from the JSON. The figures and the page are :mod:`medood.benchmark.mim_diagnosis` and
:mod:`medood.benchmark.mim_diagnosis_page`; the end results ``scripts/diagnose_mim_pipeline.py``. Usage::

    PYTHONPATH=. .venv/bin/python scripts/diagnose_mim.py --label before [--weights W] [--ar-weights W_AR]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diagnose_mim_pipeline import end_result, parser_for  # scripts/ is on sys.path when run as a script
from monai.data import Dataset

from medood.benchmark.bundles import load_network, model_space_transform
from medood.benchmark.mim_diagnosis import stage_figures
from medood.benchmark.mim_diagnosis_page import write_report
from medood.benchmark.stage_maps import percentile_table
from medood.data.datalist import bundle_datalist
from medood.data.tokens import TokenGridDataset
from medood.utils.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation"
logger = logging.getLogger("diagnose_mim")
MODES = ("atd", "nll", "union", "oracle")
OPTIONAL_MODES = ("ar",)  # the AR baseline's own end result (slow: ~1 min per volume on 2 cores)


# ---------------------------------------------------------------------------------------------- setup
def detector(configs: list[str], weights: Path) -> Any:
    return load_network(parser_for(configs), "network", weights)


def load_cases(dataset_dir: Path) -> tuple[list[dict], list[dict]]:
    """Lesioned and healthy validation volumes in model space (image, lesion, rescaled healthy twin)."""
    parser = parser_for(["inference.yaml"])
    joint = model_space_transform(parser["pixdim"], parser["fov"], ["image", "twin"], ["label"])
    healthy_list = bundle_datalist(dataset_dir, "validation", keep=["case"])
    twins = {c["case"]: c["image"] for c in healthy_list}
    lesioned = []
    for c in bundle_datalist(dataset_dir, "validation_lesion", keep=["case", "label", "lesion_type"]):
        d = joint({"image": c["image"], "label": c["label"], "twin": twins[c["case"]]})
        lesion = d["label"] > 0.5
        outside = (d["image"] > 0) & (d["twin"] > 0) & ~(F.max_pool3d(lesion.float()[None], 5, 1, 2)[0] > 0)
        d["twin"] = d["twin"] * (d["image"][outside] / d["twin"][outside]).median()  # same intensity scale
        lesioned.append({**d, "case": c["case"], "lesion_type": c.get("lesion_type", "")})
    healthy = []
    for c in healthy_list:
        d = joint({"image": c["image"], "label": c["image"], "twin": c["image"]})
        healthy.append({"image": d["image"], "case": c["case"]})
    return lesioned, healthy


# ---------------------------------------------------------------------------------------------- NLL threshold
def nll_threshold(net: Any, dataset_dir: Path, n_volumes: int, refit: bool) -> dict[str, Any]:
    """Use the checkpoint's fitted threshold, or fit it on the first ``n_volumes`` healthy TRAINING volumes."""
    if not refit and net.fitted_nll_threshold.isfinite():
        return {"value": float(net.fitted_nll_threshold), "source": "checkpoint"}
    pre = parser_for(["inference.yaml"]).get_parsed_content("preprocessing")
    train = bundle_datalist(dataset_dir, "training")[:n_volumes]
    ds = TokenGridDataset(net.tokenizer, Dataset(train, pre), flip_lr=False)  # type: ignore[arg-type]
    batches = [
        {"tokens": ds.tokens[i : i + 64].long(), "position": ds.positions[i : i + 64]} for i in range(0, len(ds), 64)
    ]
    with torch.no_grad():
        values = torch.cat(
            [net.token_nll(b["tokens"].to(net.device), b["position"].to(net.device)).flatten().cpu() for b in batches]
        )
    value = percentile_table(values, [net.nll_percentile])[net.nll_percentile]
    net.nll_threshold = value  # fixed for this diagnosis (the bundle fits it with fit_statistics)
    if net.nll_grow_percentile is not None:  # the hysteresis' lower threshold, from the same NLLs
        net.fitted_nll_grow_threshold.fill_(
            percentile_table(values, [net.nll_grow_percentile])[net.nll_grow_percentile]
        )
    table = {f"p{q:g}": v for q, v in percentile_table(values, (90, 95, 98, 99, 99.5, 99.9)).items()}
    return {
        "value": value,
        "source": f"fitted: p{net.nll_percentile:g} of NLLs, {len(ds)} slices of {len(train)} training volumes",
        "healthy_nll": table,
    }


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def setup(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """The MIM and AR detectors with the command-line overrides, and the NLL threshold record."""
    net = detector(["inference.yaml"], args.weights)
    ar = detector(["inference.yaml", "inference_ar.yaml"], args.ar_weights)
    if args.nll_percentile is not None:
        net.nll_percentile = args.nll_percentile
    overrides = dict(item.split("=", 1) for item in args.set)
    for name, value in overrides.items():
        if not hasattr(net, name):
            raise SystemExit(f"--set {name}: MIMDetector has no attribute {name!r}")
        setattr(net, name, json.loads(value))
    if args.nll_threshold is not None:
        net.nll_threshold = args.nll_threshold
        thr: dict[str, Any] = {"value": args.nll_threshold, "source": "fixed (--nll-threshold)"}
    else:
        thr = nll_threshold(net, args.dataset_dir, args.nll_fit_volumes, args.nll_percentile is not None)
    same = all(
        torch.equal(a, b) for a, b in zip(net.tokenizer.state_dict().values(), ar.tokenizer.state_dict().values())
    )
    record = {
        "weights": {
            "mim": str(args.weights),
            "mim_sha256": sha(args.weights),
            "ar": str(args.ar_weights),
            "ar_sha256": sha(args.ar_weights),
            "same_tokenizer": same,
        },
        "settings": {
            "atd_threshold": net.atd_threshold,
            "mask_dilation": net.mask_dilation,
            "nll_groups": net.nll_groups,
            "nll_percentile": net.nll_percentile,
            "nll_grow_percentile": net.nll_grow_percentile,
            "nll_grow_steps": net.nll_grow_steps,
            "nll_grow_threshold": float(net.fitted_nll_grow_threshold),
            "residual": net.residual,
            "score_k": net.score_k,
            "ar_nll_threshold": ar.threshold_nll,
            "minpool": net.minpool,
            "avgpool": net.avgpool,
            "overrides": overrides,
        },
        "nll_threshold": thr,
    }
    return net, ar, record


def diagnose(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    machine = describe_machine()
    net, ar, record = setup(args)
    entry: dict[str, Any] = {
        "label": args.label,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **record,
    }
    oracle: dict = {}
    if not args.end_result_only:
        p = parser_for(["inference.yaml", "train_tokens.yaml", "train_detector_image.yaml"])
        lesioned, healthy = load_cases(args.dataset_dir)
        generators = lambda: p.get_parsed_content("anomaly_generators", lazy=False)  # noqa: E731 - fresh per use
        figures, oracle = stage_figures(net, ar, lesioned, healthy, record, generators)
        entry.update(figures)
        logger.info("per-stage figures done (%.0f s)", time.perf_counter() - t0)
    keep = ["label", "brainmask", "is_anomalous"]
    lists = {
        "lesion": bundle_datalist(args.dataset_dir, "validation_lesion", keep=keep),
        "healthy": [{**c, "is_anomalous": 0} for c in bundle_datalist(args.dataset_dir, "validation", keep=keep)],
    }
    entry["end_result"] = {}
    for mode in args.modes:
        target = ar if mode == "ar" else net
        entry["end_result"][mode] = end_result(target, mode, lists, args.work, args.dataset_dir, oracle)
        logger.info("%s: %s (%.0f s)", mode, entry["end_result"][mode], time.perf_counter() - t0)
    entry["seconds"] = time.perf_counter() - t0
    entry["machine"] = machine
    return entry


def main() -> None:
    # runs repeat into their own output folders (medood.io.run_folder): a rerun replaces the last one;
    # set here, not at import, so importing this script (tests) leaves the environment alone
    os.environ.setdefault("MEDOOD_RUN_MODE", "overwrite")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True, help='entry label, e.g. "before" or "after: <change>"')
    ap.add_argument("--weights", type=Path, default=BUNDLE / "models" / "model.pt")
    ap.add_argument("--ar-weights", type=Path, default=BUNDLE / "models" / "model_ar.pt")
    ap.add_argument("--dataset-dir", type=Path, default=ROOT / "demo_data" / "brain_mri")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "mim_diagnosis.json")
    ap.add_argument("--work", type=Path, default=ROOT / "outputs" / "diagnose_mim")
    ap.add_argument(
        "--modes",
        nargs="*",
        default=list(MODES),
        choices=MODES + OPTIONAL_MODES,
        help="end results to run: MIM with each flagging, oracle flagging, ar = the AR baseline",
    )
    ap.add_argument(
        "--nll-percentile",
        type=float,
        default=None,
        help="refit the NLL threshold at this percentile (default: the checkpoint's, else fit at 95)",
    )
    ap.add_argument("--nll-threshold", type=float, default=None, help="fixed in-painter NLL threshold")
    ap.add_argument("--nll-fit-volumes", type=int, default=6, help="training volumes the NLL threshold is fitted on")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an inference setting of the detector (JSON value), e.g. --set mask_dilation=0 --set minpool=3",
    )
    ap.add_argument("--end-result-only", action="store_true", help="skip the per-stage figures (no oracle mode)")
    args = ap.parse_args()
    if args.end_result_only and "oracle" in args.modes:
        ap.error("the oracle mode needs the per-stage figures: drop --end-result-only or the oracle mode")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("MEDOOD_PROGRESS", "0")
    torch.manual_seed(0)
    entry = diagnose(args)
    write_report(args.out, entry, __doc__.split("Usage::")[0].strip())
    logger.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
