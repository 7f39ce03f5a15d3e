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
the ``.md`` next to it from the JSON. Usage::

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

import numpy as np
import torch
import torch.nn.functional as F
from diagnose_mim_pipeline import end_result, parser_for  # scripts/ is on sys.path when run as a script
from diagnose_mim_report import write_report
from monai.data import Dataset
from torch import Tensor

from medood.benchmark.bundles import load_network, model_space_transform
from medood.benchmark.stage_maps import flag_quality, percentile_table, ranking
from medood.data.datalist import bundle_datalist
from medood.data.tokens import TokenGridDataset
from medood.losses import ImageAnomalyTokenLoss
from medood.metrics import auroc
from medood.transforms import RandSlicesd
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


def dilate(mask: Tensor, r: int) -> Tensor:
    return mask if r <= 0 else F.max_pool2d(mask.float()[:, None], 2 * r + 1, 1, r)[:, 0] > 0


# ---------------------------------------------------------------------------------------------- per slice
@torch.no_grad()
def slice_stats(net: Any, ar: Any, vol: dict[str, Tensor], same_tokenizer: bool) -> dict[str, Tensor]:
    """Token-level and pixel-level quantities of every foreground slice of one volume (model space)."""
    x = vol["image"][None]
    slices, pos, index = net.slices_of(x)
    zs = torch.tensor([z for _, z in index])
    grab = lambda v: net.pad_slices(v[None].movedim(4, 1)[0][zs])[0]  # noqa: E731 - (N, 1, H', W') like the slices
    slices = net.pad_slices(slices)[0]
    s = net.tokenizer.downsample
    out: dict[str, list[Tensor]] = {}
    for i in range(0, len(slices), net.slice_batch):
        sl, p = slices[i : i + net.slice_batch], pos[i : i + net.slice_batch]
        tok = net.tokenize(sl, p)
        row = {
            "tokens": tok,
            "atd": net.token_anomaly(tok, p),
            "nll": net.token_nll(tok, p),
            "ar_nll": ar.token_nll(tok if same_tokenizer else ar.tokenize(sl, p), p),
            "recon": net.decode(tok),
        }
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    res = {k: torch.cat(v) for k, v in out.items()}
    res.update(slices=slices, positions=pos, brain=F.avg_pool2d((slices > 0).float(), s)[:, 0] > 0)
    if "label" in vol:
        lesion_px = grab(vol["label"])
        res.update(lesion_px=lesion_px > 0.5, twin=grab(vol["twin"]), lesion_frac=F.avg_pool2d(lesion_px, s)[:, 0])
    return res


def flags(net: Any, ar: Any, st: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tokens each flagging in-paints: the detector's own decision (``flag_scores``: configured thresholds,
    hysteresis and dilation); AR: its resampling threshold, no dilation, as it runs."""
    configured, out = net.flagging, {}
    for mode in ("atd", "nll", "union"):
        net.flagging = mode
        out[mode] = net.flag_scores(st["atd"], st["nll"])
    net.flagging = configured
    return {**out, "ar": st["ar_nll"] > ar.threshold_nll}


def token_figures(net: Any, ar: Any, lesion_stats: list[dict], healthy_stats: list[dict]) -> dict[str, Any]:
    """Ranking and flag figures over the brain tokens of lesioned slices, healthy flag rates."""
    scores: dict[str, list[Tensor]] = {"atd": [], "nll": [], "ar_nll": []}
    fl: dict[str, list[Tensor]] = {k: [] for k in ("atd", "nll", "union", "ar")}
    t25, tany = [], []
    for st in lesion_stats:
        keep = st["brain"] & st["lesion_px"].flatten(1).any(1)[:, None, None]
        for k in scores:
            scores[k].append(st[k][keep])
        for k, v in flags(net, ar, st).items():
            fl[k].append(v[keep])
        t25.append(st["lesion_frac"][keep] >= 0.25)
        tany.append(st["lesion_frac"][keep] > 0)
    y25, yany = torch.cat(t25), torch.cat(tany)
    res: dict[str, Any] = {
        "n_tokens": int(y25.numel()),
        "n_lesion_tokens_25": int(y25.sum()),
        "n_lesion_tokens_any": int(yany.sum()),
    }
    for k, vs in scores.items():
        s = torch.cat(vs).float()
        res[f"{k}_ranking"] = {"lesion_25": ranking(s, y25), "lesion_any": ranking(s, yany)}
    healthy_flags = [(flags(net, ar, st), st["brain"]) for st in healthy_stats]
    for k, fs in fl.items():
        f = torch.cat(fs)
        healthy = torch.cat([hf[k][brain] for hf, brain in healthy_flags])
        res[f"{k}_flags"] = {
            "lesion_25": flag_quality(f, y25),
            "lesion_any": flag_quality(f, yany),
            "healthy_flag_rate": float(healthy.float().mean()),
        }
    return res


def threshold_sweep(
    lesion_stats: list[dict], healthy_stats: list[dict], key: str, thresholds: dict[str, float]
) -> list[dict[str, Any]]:
    """Recall / precision (25 % lesion tokens) and healthy flag rate of ``stats[key] > t``, dilation 0 and 1."""
    rows = []
    for name, t in thresholds.items():
        for r in (0, 1):
            hits = [(dilate(st[key] > t, r), st) for st in lesion_stats]
            keep = [st["brain"] & st["lesion_px"].flatten(1).any(1)[:, None, None] for _, st in hits]
            f = torch.cat([h[k] for (h, _), k in zip(hits, keep)])
            y = torch.cat([st["lesion_frac"][k] >= 0.25 for (_, st), k in zip(hits, keep)])
            healthy = torch.cat([dilate(st[key] > t, r)[st["brain"]] for st in healthy_stats])
            rows.append(
                {
                    "threshold": name,
                    "value": t,
                    "dilation": r,
                    **flag_quality(f, y),
                    "healthy_flag_rate": float(healthy.float().mean()),
                }
            )
    return rows


def inpainter_figures(net: Any, lesion_stats: list[dict], healthy_stats: list[dict]) -> dict[str, Any]:
    """All lesion tokens in-painted (dilated as configured): what is healed, what is disturbed; tokenizer floor."""
    acc: dict[str, list[Tensor]] = {k: [] for k in ("rec_in", "inp_in", "contrast", "heal_rec", "heal_inp")}
    out_rec, out_inp, ring_rec, ring_inp = [], [], [], []
    with torch.no_grad():
        for st in lesion_stats:
            mask = dilate(st["lesion_frac"] >= 0.25, net.mask_dilation)
            x, rec, lesion = st["slices"], st["recon"], st["lesion_px"]
            x_hat = torch.cat(
                [
                    net.decode(net.inpaint(st["tokens"][i : i + 64], mask[i : i + 64], st["positions"][i : i + 64]))
                    for i in range(0, len(x), 64)
                ]
            )
            brain = x > 0
            acc["rec_in"].append((x - rec).abs()[lesion])
            acc["inp_in"].append((x - x_hat).abs()[lesion])
            acc["contrast"].append((x - st["twin"]).abs()[lesion])
            acc["heal_rec"].append((rec - st["twin"]).abs()[lesion])
            acc["heal_inp"].append((x_hat - st["twin"]).abs()[lesion])
            ring = F.interpolate(mask.float()[:, None], scale_factor=net.tokenizer.downsample) > 0
            out_rec.append((x - rec).abs()[brain & ~lesion])
            out_inp.append((x - x_hat).abs()[brain & ~lesion])
            ring_rec.append((x - rec).abs()[brain & ring & ~lesion])
            ring_inp.append((x - x_hat).abs()[brain & ring & ~lesion])
    m = {k: float(torch.cat(v).mean()) for k, v in acc.items()}
    healthy = torch.cat([(st["slices"] - st["recon"]).abs()[st["slices"] > 0] for st in healthy_stats])
    p50, p99 = (float(torch.quantile(healthy[torch.randperm(healthy.numel())[:2_000_000]], q)) for q in (0.5, 0.99))
    lesion_rec = torch.cat(acc["rec_in"])
    return {
        "inpainter": {
            "residual_in_lesion_after_inpainting": m["inp_in"],
            "residual_in_lesion_tokenizer_only": m["rec_in"],
            "lesion_contrast_to_healthy_twin": m["contrast"],
            "distance_to_twin_in_lesion_tokenizer_only": m["heal_rec"],
            "distance_to_twin_in_lesion_after_inpainting": m["heal_inp"],
            "healed_fraction": 1.0 - m["heal_inp"] / max(m["contrast"], 1e-9),
            "residual_outside_lesion_after": float(torch.cat(out_inp).mean()),
            "residual_outside_lesion_before": float(torch.cat(out_rec).mean()),
            "residual_inpainted_ring_after": float(torch.cat(ring_inp).mean()),
            "residual_inpainted_ring_before": float(torch.cat(ring_rec).mean()),
        },
        "tokenizer": {
            "healthy_residual_p50": p50,
            "healthy_residual_p99": p99,
            "lesion_residual_mean": float(lesion_rec.mean()),
            "lesion_residual_p50": float(lesion_rec.median()),
            "lesion_fraction_above_healthy_p99": float((lesion_rec > p99).float().mean()),
        },
    }


def per_case(net: Any, ar: Any, lesion_stats: list[dict], cases: list[dict]) -> list[dict[str, Any]]:
    """Recall of every flagging on the lesion tokens (>= 25 %) of each validation lesion."""
    rows = []
    for st, c in zip(lesion_stats, cases):
        target = st["lesion_frac"] >= 0.25
        row: dict[str, Any] = {"case": c["case"], "lesion_type": c["lesion_type"], "lesion_tokens": int(target.sum())}
        row.update({f"recall_{k}": flag_quality(v, target)["recall"] for k, v in flags(net, ar, st).items()})
        rows.append(row)
    return rows


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


@torch.no_grad()
def paired_timing(net: Any, volume: Tensor, repeats: int = 3) -> dict[str, float]:
    """Median detector seconds on one volume per flagging, the flaggings interleaved (fair under a varying load)."""
    times: dict[str, list[float]] = {m: [] for m in ("atd", "nll", "union")}
    for _ in range(repeats):
        for mode, values in times.items():
            net.flagging = mode
            start = time.perf_counter()
            net.predict_map(volume[None])
            values.append(time.perf_counter() - start)
    return {m: float(np.median(v)) for m, v in times.items()}


@torch.no_grad()
def synthetic_figures(net: Any, healthy: list[dict]) -> dict[str, float]:
    """Token-detector AUROC on synthetic anomalies of the healthy validation slices (16 per volume, seeded).

    Tells "the detector does not learn its training task" from "it learns it but that does not transfer to
    lesions": the image-space generators of ``configs/train_detector_image.yaml`` and the token-space corruptions.
    """
    p = parser_for(["inference.yaml", "train_tokens.yaml", "train_detector_image.yaml"])
    items = [it for c in healthy for it in RandSlicesd("image", num_samples=16, uniform=True)({"image": c["image"]})]
    x, pos = torch.stack([torch.as_tensor(i["image"]) for i in items]), torch.stack([i["position"] for i in items])
    brain = F.avg_pool2d((x > 0).float(), net.tokenizer.downsample)[:, 0] > 0
    out = {}
    for name, kw in (("image_space", {"token_prob": 0.0}), ("token_space", {"token_prob": 1.0})):
        gens = p.get_parsed_content("anomaly_generators", lazy=False)
        loss = ImageAnomalyTokenLoss(net.tokenizer, generators=gens, clean_prob=0.0, seed=12345, **kw)
        tokens, target = loss.make_batch(x, pos)
        prob = torch.cat([net.token_anomaly(tokens[i : i + 64], pos[i : i + 64]) for i in range(0, len(x), 64)])
        out[f"atd_auroc_{name}"] = auroc(prob[brain].numpy(), target[brain].numpy())
        out[f"anomalous_token_fraction_{name}"] = float(target[brain].mean())
    return out


def stage_figures(net: Any, ar: Any, record: dict[str, Any], dataset_dir: Path) -> tuple[dict[str, Any], dict]:
    """Token, in-painter and tokenizer figures, and the oracle flags of every validation volume."""
    lesioned, healthy = load_cases(dataset_dir)
    same = record["weights"]["same_tokenizer"]
    lesion_stats = [slice_stats(net, ar, c, same) for c in lesioned]
    healthy_stats = [slice_stats(net, ar, c, same) for c in healthy]
    atd_thresholds = {f"p>{v:g}": v for v in (0.2, 0.5, 0.8, 0.95)}
    figures = {
        "tokens": token_figures(net, ar, lesion_stats, healthy_stats),
        "sweeps": {
            "atd": threshold_sweep(lesion_stats, healthy_stats, "atd", atd_thresholds),
            "nll": threshold_sweep(lesion_stats, healthy_stats, "nll", record["nll_threshold"].get("healthy_nll", {})),
        },
        **inpainter_figures(net, lesion_stats, healthy_stats),
        "per_case": per_case(net, ar, lesion_stats, lesioned),
        "seconds_per_volume_paired": paired_timing(net, healthy[0]["image"]),
        "synthetic": synthetic_figures(net, healthy),
    }
    oracle = {
        "lesion": [dilate(st["lesion_frac"] >= 0.25, net.mask_dilation) for st in lesion_stats],
        "healthy": [torch.zeros(st["tokens"].shape, dtype=torch.bool) for st in healthy_stats],
    }
    return figures, oracle


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
        figures, oracle = stage_figures(net, ar, record, args.dataset_dir)
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
