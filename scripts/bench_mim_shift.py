"""MIM-OOD and its AR baseline on clean and shifted-site VALIDATION volumes, per stage and per lesion size.

Never touches the test split. Sets (model space, the bundle's preprocessing):

* ``clean``: the demo ``validation`` (healthy) and ``validation_lesion`` (their lesioned twins) volumes;
* ``shifted``: ``medood data shifted-site`` (another site's anatomy, sequence, scanner and skull-strip; lesioned
  twins with exact masks spanning the < 500 / 500-1500 / > 1500 voxel buckets).

Preprocessings: ``scale`` (the bundle's: brain 99th percentile -> 1) and ``nyul`` (then
:class:`medood.transforms.HistogramStandardize` onto landmarks learnt on healthy TRAINING volumes).

Three steps, so the slow AR runs once per volume and everything after is a sweep on cached stage volumes::

    PYTHONPATH=. python scripts/bench_mim_shift.py landmarks            # -> docs/benchmarks/mim_shift_landmarks.json
    PYTHONPATH=. python scripts/bench_mim_shift.py compute --detector mim --prep scale nyul
    PYTHONPATH=. python scripts/bench_mim_shift.py compute --detector ar --prep scale nyul
    PYTHONPATH=. python scripts/bench_mim_shift.py report               # -> docs/benchmarks/mim_shift.{json,md}

``compute`` stores the detector's public :meth:`stage_maps` (tokenizer reconstruction residual, restored residual,
token NLL, flagged tokens) of every volume under ``--cache``. ``report`` measures, per detector / preprocessing /
set: per-lesion detection rate by size bucket at each stage, pixel AP, best Dice and Dice at the calibrated
threshold per bucket and overall, volume AUROC lesioned vs healthy, where the healthy false positives come from;
then sweeps the fixes (preprocessing, residual read inside the flagged tokens or everywhere, pooling, rim
erosion, volume score) and chooses, for each detector with the same budget, by the worst case of clean and
shifted validation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import Dataset
from monai.transforms import Compose, CropForegroundd, EnsureTyped, Orientationd, ResizeWithPadOrCropd, Spacingd
from scipy import ndimage as ndi

from medood.data.datalist import bundle_datalist
from medood.data.demo.shifted_site import SIZE_BUCKETS
from medood.data.transforms import LoadVolumed
from medood.metrics import auroc, best_dice, dice_at_threshold, pixel_ap
from medood.transforms import HistogramStandardized, ScaleNonzeroPercentiled, learn_landmarks
from medood.utils.checkpoints import load_state
from medood.utils.conformal import conformal_threshold
from medood.utils.io import atomic_write_text
from medood.utils.machine import describe_machine
from medood.utils.reduce import reduce_map

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation"
OUT = ROOT / "docs" / "benchmarks"
LANDMARKS = OUT / "mim_shift_landmarks.json"
SETS = {"clean": ROOT / "demo_data" / "brain_mri", "shifted": ROOT / "demo_data" / "shifted_site"}
DETECTORS = {"mim": (["inference.yaml"], "model.pt"), "ar": (["inference.yaml", "inference_ar.yaml"], "model_ar.pt")}
STAGES = ("recon_residual", "residual", "token_nll", "flagged")
MAP_ALPHA = 0.005  # voxel false-alarm rate of the calibrated map threshold (the bundle's map_percentile 99.5)
logger = logging.getLogger("bench_mim_shift")


def parser_for(configs: list[str]) -> ConfigParser:
    p = ConfigParser()
    p.read_config([str(BUNDLE / "configs" / c) for c in configs])
    p.update({"bundle_root": str(BUNDLE)})
    return p


def preprocessing(prep: str, with_label: bool) -> Compose:
    """The bundle's model-space preprocessing (label resampled nearest alongside), optionally standardised."""
    p = parser_for(["inference.yaml"])
    keys = ["image", "label"] if with_label else ["image"]
    mode = ("bilinear", "nearest") if with_label else "bilinear"
    steps: list[Any] = [LoadVolumed(keys), Orientationd(keys, "RAS", labels=None), Spacingd(keys, p["pixdim"], mode=mode),
                        ScaleNonzeroPercentiled("image")]  # fmt: skip
    if prep == "nyul":
        steps.append(HistogramStandardized("image", json.loads(LANDMARKS.read_text())["landmarks"]))
    steps += [CropForegroundd(keys, source_key="image", allow_smaller=True), ResizeWithPadOrCropd(keys, p["fov"]),
              EnsureTyped(keys, dtype=torch.float32, track_meta=False)]  # fmt: skip
    return Compose(steps)


def cases(set_name: str) -> list[dict[str, Any]]:
    """Healthy then lesioned cases of a set (``label`` only on lesioned ones)."""
    root = SETS[set_name]
    healthy = [{**c, "lesioned": 0} for c in bundle_datalist(root, "validation", keep=["case"])]
    lesioned = [{**c, "lesioned": 1} for c in bundle_datalist(root, "validation_lesion", keep=["case", "label"])]
    return healthy + lesioned


def cmd_landmarks(args: argparse.Namespace) -> None:
    """Nyul landmarks: mean percentile landmarks of healthy TRAINING volumes after the bundle's scaling."""
    pre = preprocessing("scale", False)
    train = bundle_datalist(SETS["clean"], "training")[: args.volumes]
    landmarks = learn_landmarks(pre({"image": c["image"]})["image"] for c in train)
    report = {"landmarks": landmarks, "source": f"{len(train)} healthy demo training volumes (T1w), model space"}
    atomic_write_text(LANDMARKS, json.dumps(report, indent=1) + "\n")
    logger.info("landmarks: %s", landmarks)


def detector(name: str) -> Any:
    configs, weights = DETECTORS[name]
    net = parser_for(configs).get_parsed_content("network")
    load_state(net, BUNDLE / "models" / weights)
    return net.eval()


def cmd_compute(args: argparse.Namespace) -> None:
    """Stage volumes of every case (shifted set first), cached as compressed float16 / uint8 npz."""
    torch.manual_seed(0)
    net = detector(args.detector)
    for prep, set_name in itertools.product(args.prep, args.sets):
        for c in cases(set_name):
            path = args.cache / f"{args.detector}_{prep}_{set_name}_{c['case']}.npz"
            if path.exists():
                continue
            d = preprocessing(prep, bool(c["lesioned"]))({k: c[k] for k in ("image", "label") if k in c})
            start = time.perf_counter()
            st = net.stage_maps(d["image"][None])
            seconds = time.perf_counter() - start
            arrays = {k: st[k][0, 0].numpy().astype(np.float16) for k in STAGES if k != "flagged"}
            arrays["flagged"] = st["flagged"][0, 0].numpy().astype(np.uint8)
            arrays["image"] = d["image"][0].numpy().astype(np.float16)
            if "label" in d:
                arrays["label"] = (d["label"][0].numpy() > 0.5).astype(np.uint8)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, seconds=seconds, **arrays)
            logger.info("%s %s %s %s: %.1f s", args.detector, prep, set_name, c["case"], seconds)


# ------------------------------------------------------------------------------------------------ report
def load_cache(cache: Path, det: str, prep: str, set_name: str) -> list[dict[str, Any]] | None:
    out = []
    for c in cases(set_name):
        path = cache / f"{det}_{prep}_{set_name}_{c['case']}.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            v = {k: torch.from_numpy(z[k].astype(np.float32)) for k in z.files if k not in ("seconds", "label")}
            v["seconds"] = float(z["seconds"])
            v["label"] = torch.from_numpy(z["label"].astype(bool)) if "label" in z.files else None
        out.append({**v, "case": c["case"], "lesioned": c["lesioned"]})
    return out


def bucket_of(n: int) -> str:
    return next(k for k, (lo, hi) in SIZE_BUCKETS.items() if lo <= n < hi)


def components(label: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    lab, n = ndi.label(label.numpy(), structure=np.ones((3, 3, 3), dtype=bool))
    return [(bucket_of(int((lab == i).sum())), lab == i) for i in range(1, n + 1)]


def make_map(net: Any, v: dict[str, Any], setting: dict[str, Any]) -> torch.Tensor:
    """The anomaly map of one fix setting from the cached stages (the detector's own post-processing)."""
    raw = v["residual"] * (v["flagged"] > 0) if setting["residual"] == "gated" else v["residual"]
    erode = net.erode_mask
    net.erode_mask = setting["erode"]
    try:
        amap = net.postprocess_map(raw[None, None], v["image"][None, None], setting["minpool"], setting["avgpool"])
    finally:
        net.erode_mask = erode
    return amap[0, 0]


def volume_score(kind: str, amap: torch.Tensor, v: dict[str, Any]) -> float:
    brain = v["image"] > 0
    if kind.startswith("topk_"):
        return float(reduce_map(amap[None, None], "topk", float(kind[5:]), brain[None, None]))
    flagged = (v["flagged"] > 0) & brain
    if kind == "flagged_largest":  # voxels of the largest 3D-connected flagged (in-painted) region
        lab, n = ndi.label(flagged.numpy())
        return float(np.bincount(lab.ravel())[1:].max()) if n else 0.0
    if kind == "flagged_mass":  # map mass inside the flagged regions per brain voxel
        return float((amap * flagged).sum() / brain.sum().clamp_min(1))
    raise ValueError(kind)


VOLUME_SCORES = ("topk_0.001", "topk_0.01", "flagged_largest", "flagged_mass")


def figures(net: Any, vols: list[dict[str, Any]], setting: dict[str, Any], thr: float | None) -> dict[str, Any]:
    """Map and volume figures of one setting on one set; ``thr`` = calibrated map threshold (None: own healthy)."""
    maps = [make_map(net, v, setting) for v in vols]
    healthy = [(m, v) for m, v in zip(maps, vols) if not v["lesioned"]]
    lesioned = [(m, v) for m, v in zip(maps, vols) if v["lesioned"]]
    hv = torch.cat([m[v["image"] > 0] for m, v in healthy]).numpy()
    own = float(conformal_threshold(hv[:: max(1, hv.size // 2_000_000)], MAP_ALPHA).threshold)
    thr = own if thr is None else thr
    out: dict[str, Any] = {"map_threshold": thr, "own_healthy_threshold": own}
    mk = [(m.numpy(), v["label"].numpy(), (v["image"] > 0).numpy()) for m, v in lesioned]
    out["all"] = {"pixel_ap": float(pixel_ap(*zip(*mk))), "best_dice": float(best_dice(*zip(*mk))[0]),
                  "dice_at_threshold": float(dice_at_threshold(*zip(*mk), thr).pooled)}  # fmt: skip
    comps = [components(v["label"]) for _, v in lesioned]
    for b in SIZE_BUCKETS:
        sel = []
        hits = {"map": 0, "flagged": 0, "total": 0}
        for (m, v), cs in zip(lesioned, comps):
            fg = (v["image"] > 0).numpy().copy()
            mask = np.zeros_like(fg)
            for bb, c in cs:
                if bb == b:
                    mask |= c
                    hits["total"] += 1
                    hits["map"] += int((m.numpy()[c] >= thr).any())
                    hits["flagged"] += int((v["flagged"].numpy()[c] > 0).any())
                else:
                    fg &= ~c
            if mask.any():
                sel.append((m.numpy(), mask, fg))
        if not sel:
            continue
        out[b] = {"lesions": hits["total"], "detected_map": hits["map"] / hits["total"],
                  "detected_flagged": hits["flagged"] / hits["total"], "pixel_ap": float(pixel_ap(*zip(*sel))),
                  "best_dice": float(best_dice(*zip(*sel))[0]),
                  "dice_at_threshold": float(dice_at_threshold(*zip(*sel), thr).pooled)}  # fmt: skip
    y = np.array([v["lesioned"] for v in vols])
    out["volume_auroc"] = {k: float(auroc(np.array([volume_score(k, m, v) for m, v in zip(maps, vols)]), y))
                           for k in VOLUME_SCORES}  # fmt: skip
    return out


def healthy_sources(net: Any, vols: list[dict[str, Any]], setting: dict[str, Any]) -> dict[str, float]:
    """Where the healthy volumes' high map values come from (means over healthy volumes)."""
    rows = []
    for v in (v for v in vols if not v["lesioned"]):
        brain = v["image"] > 0
        amap = make_map(net, v, setting)
        k = max(1, int(0.001 * brain.sum()))
        top = torch.zeros_like(brain)
        top.view(-1)[amap.flatten().topk(k).indices] = True
        rim = brain & ~torch.from_numpy(ndi.binary_erosion(brain.numpy(), iterations=3))
        flagged = v["flagged"] > 0
        rows.append({
            "tokens_flagged": float(flagged[brain].float().mean()),
            "recon_residual_p99": float(torch.quantile(v["recon_residual"][brain][::7], 0.99)),
            "residual_p99": float(torch.quantile(v["residual"][brain][::7], 0.99)),
            "token_nll_p99": float(torch.quantile(v["token_nll"][brain][::7], 0.99)),
            "top01_in_flagged": float((top & flagged).sum() / k),
            "top01_on_rim3": float((top & rim).sum() / k),
            "top01_recon_share": float((v["recon_residual"][top]).sum() / v["residual"][top].sum().clamp_min(1e-8)),
            "volume_score_topk_0.001": float(amap[top].mean()),
        })  # fmt: skip
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


SHIPPED = {"residual": "input", "minpool": 1, "avgpool": 5, "erode": 1}
GRID = [{"residual": r, "minpool": mp, "avgpool": ap, "erode": e}
        for r, (mp, ap), e in itertools.product(("input", "gated"), ((1, 5), (3, 5), (1, 3), (3, 3)), (1, 3))]  # fmt: skip


def map_score(f: dict[str, Any]) -> float:
    return float(np.mean([f["all"]["pixel_ap"], f["all"]["best_dice"], f["all"]["dice_at_threshold"]]))


def cmd_report(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    report: dict[str, Any] = {"machine": describe_machine(), "data": {}, "results": {}, "chosen": {}}
    for s in SETS:
        cs = cases(s)
        report["data"][s] = {"healthy": sum(1 for c in cs if not c["lesioned"]), "lesioned": sum(c["lesioned"] for c in cs)}
    for det in args.detectors:
        net = detector(det)
        rows = []
        for prep in ("scale", "nyul"):
            vols = {s: load_cache(args.cache, det, prep, s) for s in SETS}
            if any(v is None for v in vols.values()):
                logger.warning("%s %s: cache incomplete, skipped", det, prep)
                continue
            for setting in [SHIPPED] + [g for g in GRID if g != SHIPPED] if args.sweep else [SHIPPED]:
                clean = figures(net, vols["clean"], setting, None)  # calibrated on the clean healthy volumes
                shifted = figures(net, vols["shifted"], setting, clean["map_threshold"])
                rows.append({"prep": prep, **setting, "clean": clean, "shifted": shifted,
                             "seconds_per_volume": float(np.mean([v["seconds"] for s in SETS for v in vols[s]]))})  # fmt: skip
                logger.info("%s %s %s: clean %s shifted %s", det, prep, setting, clean["all"], shifted["all"])
            report.setdefault("healthy_sources", {})[f"{det}_{prep}"] = {
                s: healthy_sources(net, vols[s], SHIPPED) for s in SETS
            }
        if not rows:
            continue
        report["results"][det] = rows
        best = max(rows, key=lambda r: min(map_score(r["clean"]), map_score(r["shifted"])))
        worst_auc = {k: min(best["clean"]["volume_auroc"][k], best["shifted"]["volume_auroc"][k]) for k in VOLUME_SCORES}
        report["chosen"][det] = {"setting": {k: best[k] for k in ("prep", *SHIPPED)},
                                 "volume_score": max(worst_auc, key=worst_auc.get)}  # fmt: skip
    report["seconds"] = time.perf_counter() - start
    report["selection"] = ("per detector, the same budget: the map setting (preprocessing, residual inside the flagged "
                           "tokens or everywhere, min/mean pool, rim erosion) with the highest min(clean, shifted) mean "
                           "of pixel AP, best Dice and Dice at the threshold calibrated on the CLEAN healthy validation "
                           "volumes; then the volume score with the highest min(clean, shifted) AUROC")  # fmt: skip
    out = args.out
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    write_markdown(out.with_suffix(".md"), report)


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    f3 = "{:.3f}".format
    lines = ["# MIM-OOD and the AR baseline on clean and shifted-site validation volumes", "",
             f"Written by `scripts/bench_mim_shift.py report` ({report['machine']}); validation only, never the test "
             f"split. Volumes: {report['data']}. Map threshold: split-conformal at alpha {MAP_ALPHA} on the CLEAN "
             "healthy validation voxels (what the shipped calibration gives a new site). 'detected' = a lesion "
             "component with a map voxel above that threshold ('flagged': with a flagged token).", "",
             f"Selection: {report['selection']}.", ""]  # fmt: skip
    for det, rows in report["results"].items():
        lines += [f"## {det}", "", "| prep | residual | pool | erode | set | pixel AP | best Dice | Dice@thr | "
                  + " | ".join(f"{b}: n / det map / det flag / AP / best Dice" for b in SIZE_BUCKETS)
                  + " | vol AUROC top0.1% / top1% / flagged largest / flagged mass |",
                  "|" + "---|" * (9 + len(SIZE_BUCKETS))]  # fmt: skip
        for r in rows:
            for s in ("clean", "shifted"):
                f = r[s]
                per_b = []
                for b in SIZE_BUCKETS:
                    x = f.get(b)
                    per_b.append("-" if x is None else f"{x['lesions']} / {f3(x['detected_map'])} / "
                                 f"{f3(x['detected_flagged'])} / {f3(x['pixel_ap'])} / {f3(x['best_dice'])}")  # fmt: skip
                va = " / ".join(f3(f["volume_auroc"][k]) for k in VOLUME_SCORES)
                lines.append(f"| {r['prep']} | {r['residual']} | {r['minpool']}/{r['avgpool']} | {r['erode']} | {s} | "
                             f"{f3(f['all']['pixel_ap'])} | {f3(f['all']['best_dice'])} | "
                             f"{f3(f['all']['dice_at_threshold'])} | {' | '.join(per_b)} | {va} |")  # fmt: skip
        lines.append("")
    lines += ["## Where the healthy volumes' high values come from (shipped post-processing)", "",
              "| detector / prep | set | tokens flagged | recon residual p99 | residual p99 | token NLL p99 | "
              "top 0.1 % in flagged | top 0.1 % on 3-voxel rim | recon / residual at top 0.1 % | volume score |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, per in report.get("healthy_sources", {}).items():
        for s, h in per.items():
            lines.append(f"| {key} | {s} | " + " | ".join(f3(x) for x in h.values()) + " |")
    lines += ["", "## Chosen (validation only)", ""]
    for det, c in report["chosen"].items():
        lines.append(f"- {det}: {c['setting']}, volume score {c['volume_score']}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lm = sub.add_parser("landmarks")
    lm.add_argument("--volumes", type=int, default=20)
    cp = sub.add_parser("compute")
    cp.add_argument("--detector", choices=sorted(DETECTORS), required=True)
    cp.add_argument("--prep", nargs="+", default=["scale"], choices=("scale", "nyul"))
    cp.add_argument("--sets", nargs="+", default=["shifted", "clean"], choices=sorted(SETS))
    rp = sub.add_parser("report")
    rp.add_argument("--detectors", nargs="+", default=["mim", "ar"])
    rp.add_argument("--sweep", action="store_true", help="every fix setting (default: the shipped one only)")
    rp.add_argument("--out", type=Path, default=OUT / "mim_shift.json")
    for p in (cp, rp):
        p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "mim_shift_cache")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    {"landmarks": cmd_landmarks, "compute": cmd_compute, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
