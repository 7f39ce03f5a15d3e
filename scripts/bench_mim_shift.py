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
import yaml
from monai.bundle import ConfigParser
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


def bundle_prep() -> str:
    """The bundle's own preprocessing: ``nyul`` when inference.yaml sets ``histogram_landmarks``, else ``scale``."""
    return "nyul" if parser_for(["inference.yaml"])["histogram_landmarks"] else "scale"


def preprocessing(prep: str, with_label: bool) -> Compose:
    """The bundle's model-space preprocessing (label resampled nearest alongside), optionally standardised."""
    p = parser_for(["inference.yaml"])
    keys = ["image", "label"] if with_label else ["image"]
    mode = ("bilinear", "nearest") if with_label else "bilinear"
    steps: list[Any] = [
        LoadVolumed(keys),
        Orientationd(keys, "RAS", labels=None),
        Spacingd(keys, p["pixdim"], mode=mode),
        ScaleNonzeroPercentiled("image"),
    ]
    if prep == "nyul":
        steps.append(HistogramStandardized("image", json.loads(LANDMARKS.read_text())["landmarks"]))
    steps += [
        CropForegroundd(keys, source_key="image", allow_smaller=True),
        ResizeWithPadOrCropd(keys, p["fov"]),
        EnsureTyped(keys, dtype=torch.float32, track_meta=False),
    ]
    return Compose(steps)


def cases(set_name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Healthy then lesioned cases of a set (``label`` only on lesioned ones); ``limit``: the first of each."""
    root = SETS[set_name]
    healthy = [{**c, "lesioned": 0} for c in bundle_datalist(root, "validation", keep=["case", "site"])]
    lesioned = [
        {**c, "lesioned": 1} for c in bundle_datalist(root, "validation_lesion", keep=["case", "label", "site"])
    ]
    return healthy[:limit] + lesioned[:limit]


def key(c: dict[str, Any]) -> str:
    """A case's unique name (a demo lesioned twin has its healthy subject's case name)."""
    return c["case"] + ("_lesion" if c["lesioned"] else "")


def cache_path(cache: Path, det: str, prep: str, set_name: str, c: dict[str, Any]) -> Path:
    return cache / f"{det}_{prep}_{set_name}_{key(c)}.npz"


def cmd_landmarks(args: argparse.Namespace) -> None:
    """Nyul landmarks: mean percentile landmarks of healthy TRAINING volumes after the bundle's scaling."""
    pre = preprocessing("scale", False)
    train = bundle_datalist(SETS["clean"], "training")[: args.volumes]
    landmarks = learn_landmarks(pre({"image": c["image"]})["image"] for c in train)
    report = {"landmarks": landmarks, "source": f"{len(train)} healthy demo training volumes (T1w), model space"}
    atomic_write_text(LANDMARKS, json.dumps(report, indent=1) + "\n")
    logger.info("landmarks: %s", landmarks)


def detector(name: str, weights: Path | None = None) -> Any:
    """The bundle's detector ``name`` with its shipped weights (or the checkpoint ``weights``)."""
    configs, shipped = DETECTORS[name]
    net = parser_for(configs).get_parsed_content("network")
    load_state(net, weights or BUNDLE / "models" / shipped)
    return net.eval()


def cmd_compute(args: argparse.Namespace) -> None:
    """Stage volumes of every case (shifted set first), cached as compressed float16 / uint8 npz."""
    torch.manual_seed(0)
    net = detector(args.detector, args.weights)
    for item in args.set or []:  # detector settings to try (e.g. flagging=union): cache them under their own --cache
        name, _, value = item.partition("=")
        if not hasattr(net, name):
            raise SystemExit(f"--set {item}: the {args.detector} detector has no setting {name!r}")
        setattr(net, name, yaml.safe_load(value))
        logger.info("%s.%s = %r", args.detector, name, getattr(net, name))
    for prep, set_name in itertools.product(args.prep, args.sets):
        todo = cases(set_name, args.limit)
        half = sum(1 for c in todo if not c["lesioned"])
        order = [c for pair in itertools.zip_longest(todo[:half], todo[half:]) for c in pair if c is not None]
        for c in order:  # a healthy volume, then its lesioned twin: a stopped run leaves usable pairs
            path = cache_path(args.cache, args.detector, prep, set_name, c)
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
def cached_cases(cache: Path, det: str, prep: str, set_name: str) -> set[str]:
    """Names of the cases of a set whose stage volumes are cached."""
    return {key(c) for c in cases(set_name) if cache_path(cache, det, prep, set_name, c).exists()}


def load_cache(cache: Path, det: str, prep: str, set_name: str, names: set[str]) -> list[dict[str, Any]]:
    """The cached stage volumes of the cases ``names`` of a set (healthy first)."""
    out = []
    for c in (c for c in cases(set_name) if key(c) in names):
        with np.load(cache_path(cache, det, prep, set_name, c)) as z:
            v: dict[str, Any] = {
                k: torch.from_numpy(z[k].astype(np.float32)) for k in z.files if k not in ("seconds", "label")
            }
            v["seconds"] = float(z["seconds"])
            v["label"] = torch.from_numpy(z["label"].astype(bool)) if "label" in z.files else None
        out.append({**v, "case": c["case"], "lesioned": c["lesioned"], "site": c.get("site", "demo")})
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


def volume_score(net: Any, kind: str, amap: torch.Tensor, v: dict[str, Any]) -> float:
    """One candidate volume score of a map (see :data:`VOLUME_SCORES`)."""
    brain = v["image"] > 0
    if kind.startswith("topk_"):  # topk_<fraction>[_rim<voxels>]: top-k mean, optionally off a wider rim
        frac, _, rim = kind[5:].partition("_rim")
        mask = torch.from_numpy(ndi.binary_erosion(brain.numpy(), iterations=int(rim))) if rim else brain
        return float(reduce_map(amap[None, None], "topk", float(frac), mask[None, None]))
    if kind.startswith("selfnorm_"):  # top-k over the volume's own median map value (a site-wide offset cancels)
        top = float(reduce_map(amap[None, None], "topk", float(kind[9:]), brain[None, None]))
        support = amap[brain & (amap > 0)]
        return top / max(float(support.median()) if support.numel() else 0.0, 1e-6)
    if kind.startswith("local_"):  # top 0.5 % of the map minus its Gaussian background (sigma in voxels)
        sigma = float(kind[6:])
        a, w = amap.numpy(), brain.numpy().astype(np.float32)
        local = a - ndi.gaussian_filter(a, sigma) / np.maximum(ndi.gaussian_filter(w, sigma), 1e-3)
        return float(reduce_map(torch.from_numpy(local)[None, None], "topk", 0.005, brain[None, None]))
    flagged = (v["flagged"] > 0) & brain
    if kind == "flagged_largest":  # voxels of the largest 3D-connected flagged (in-painted) region
        lab, n = ndi.label(flagged.numpy())
        return float(np.bincount(lab.ravel())[1:].max()) if n else 0.0
    if kind.startswith("region_"):  # the detector's own cluster-extent score (score_reduction="largest_region")
        return float(net.region_score(amap[None, None], float(kind[7:]), brain[None, None])[0])
    if kind == "flagged_mass":  # map mass inside the flagged regions per brain voxel
        return float((amap * flagged).sum() / brain.sum().clamp_min(1))
    raise ValueError(kind)


VOLUME_SCORES = {  # candidate volume scores -> column label
    "topk_0.001": "top 0.1 %",
    "topk_0.01": "top 1 %",
    "topk_0.001_rim5": "top 0.1 % off a 5-voxel rim",
    "selfnorm_0.001": "top 0.1 % / own median",
    "local_8": "top 0.5 % above its 8-voxel background",
    "flagged_largest": "largest flagged region",
    "flagged_mass": "map mass in flagged",
    "region_0.1": "largest region > 0.1",
    "region_0.2": "> 0.2",
    "region_0.3": "> 0.3",
}


def seg_figures(
    cases_: list[tuple[np.ndarray, np.ndarray, np.ndarray]], thr: float, sample: int | None = None
) -> dict[str, float]:
    """Pooled pixel AP, best Dice and Dice at ``thr`` of ``(map, lesion mask, foreground)`` cases (AP and best
    Dice on a seeded ``sample`` of voxels per case in the sweep; ``None`` = every voxel)."""
    maps, masks, fgs = [c[0] for c in cases_], [c[1] for c in cases_], [c[2] for c in cases_]
    return {
        "pixel_ap": float(pixel_ap(maps, masks, foreground=fgs, max_voxels_per_case=sample)),
        "best_dice": float(best_dice(maps, masks, foreground=fgs, max_voxels_per_case=sample)[0]),
        "dice_at_threshold": float(dice_at_threshold(maps, masks, thr, foreground=fgs).pooled),
    }


def figures(
    net: Any, vols: list[dict[str, Any]], setting: dict[str, Any], thr: float | None, buckets: bool = True
) -> dict[str, Any]:
    """Map and volume figures of one setting on one set; ``thr`` = calibrated map threshold (None: own healthy)."""
    maps = [make_map(net, v, setting) for v in vols]
    healthy = [(m, v) for m, v in zip(maps, vols) if not v["lesioned"]]
    lesioned = [(m, v) for m, v in zip(maps, vols) if v["lesioned"]]
    hv = torch.cat([m[v["image"] > 0] for m, v in healthy]).numpy()
    own = float(conformal_threshold(hv[:: max(1, hv.size // 2_000_000)], MAP_ALPHA).threshold)
    thr = own if thr is None else thr
    out: dict[str, Any] = {"map_threshold": thr, "own_healthy_threshold": own}
    mk = [(m.numpy(), v["label"].numpy(), (v["image"] > 0).numpy()) for m, v in lesioned]
    out["all"] = seg_figures(mk, thr, None if buckets else SWEEP_SAMPLE)
    comps = [components(v["label"]) for _, v in lesioned]
    for b in SIZE_BUCKETS if buckets else ():
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
        out[b] = {
            "lesions": hits["total"],
            "detected_map": hits["map"] / hits["total"],
            "detected_flagged": hits["flagged"] / hits["total"],
            **seg_figures(sel, thr),
        }
    y = np.array([v["lesioned"] for v in vols])
    out["volume_auroc"] = {
        k: float(auroc(np.array([volume_score(net, k, m, v) for m, v in zip(maps, vols)]), y)) for k in VOLUME_SCORES
    }
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
        rows.append(
            {
                "tokens_flagged": float(flagged[brain].float().mean()),
                "recon_residual_p99": float(torch.quantile(v["recon_residual"][brain][::7], 0.99)),
                "residual_p99": float(torch.quantile(v["residual"][brain][::7], 0.99)),
                "token_nll_p99": float(torch.quantile(v["token_nll"][brain][::7], 0.99)),
                "top01_in_flagged": float((top & flagged).sum() / k),
                "top01_on_rim3": float((top & rim).sum() / k),
                "top01_recon_share": float((v["recon_residual"][top]).sum() / v["residual"][top].sum().clamp_min(1e-8)),
                "volume_score_topk_0.001": float(amap[top].mean()),
            }
        )
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    sites = [v["site"] for v in vols if not v["lesioned"]]
    out["per_site"] = {
        site: {k: float(np.mean([r[k] for r, s in zip(rows, sites) if s == site])) for k in ("tokens_flagged",
               "recon_residual_p99", "volume_score_topk_0.001")}
        for site in sorted(set(sites))
    }  # fmt: skip
    return out


def lesion_stages(vols: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per lesioned case, what each stage sees inside the lesion (is it flagged? is its token NLL unusual?).

    ``nll_above_p95``: fraction of lesion (or healthy brain) voxels whose token NLL is above the 95th percentile of
    the CLEAN healthy validation brains' token NLLs: a lesion at the healthy rate is one the in-painter finds as
    likely as healthy tissue, which no threshold on the NLL can flag without flagging healthy tissue as often.
    """
    ref = torch.cat([v["token_nll"][v["image"] > 0][::5] for v in vols["clean"] if not v["lesioned"]])
    p95 = float(torch.quantile(ref, 0.95))
    out: dict[str, Any] = {"nll_p95": p95, "healthy": {}, "lesioned": []}
    for s, vs in vols.items():
        healthy = [v for v in vs if not v["lesioned"]]
        out["healthy"][s] = {
            "nll_above_p95": float(
                np.mean([float((v["token_nll"][v["image"] > 0] > p95).float().mean()) for v in healthy])
            ),
            "flagged": float(np.mean([float((v["flagged"] > 0)[v["image"] > 0].float().mean()) for v in healthy])),
        }
        for v in (v for v in vs if v["lesioned"]):
            lab = v["label"]
            out["lesioned"].append(
                {
                    "set": s,
                    "case": v["case"],
                    "voxels": int(lab.sum()),
                    "flagged": float((v["flagged"] > 0)[lab].float().mean()),
                    "nll_above_p95": float((v["token_nll"][lab] > p95).float().mean()),
                    "recon_residual": float(v["recon_residual"][lab].mean()),
                    "residual": float(v["residual"][lab].mean()),
                }
            )
    return out


def flagging_alternatives(caches: list[str], setting: dict[str, Any], volume_score_name: str) -> dict[str, Any]:
    """Other flaggings / weights (``NAME=DIR`` caches of ``compute --set ... [--weights ...]``): how much healthy
    brain and lesion they flag, and the figures of ``setting`` with their maps."""
    out = {}
    net = detector("mim")
    for item in caches:
        name, _, path = item.partition("=")
        names = {s: cached_cases(Path(path), "mim", "nyul", s) for s in SETS}
        vols = {s: load_cache(Path(path), "mim", "nyul", s, names[s]) for s in SETS}
        stages = lesion_stages(vols)
        (row,) = evaluate(net, vols, [{k: setting[k] for k in SHIPPED}], "nyul", buckets=False)
        les = stages["lesioned"]
        out[name] = {
            "healthy_flagged": {s: h["flagged"] for s, h in stages["healthy"].items()},
            "lesion_flagged_mean": float(np.mean([r["flagged"] for r in les])),
            "lesions_under_10pct_flagged": int(sum(r["flagged"] < 0.1 for r in les)),
            "lesioned_volumes": len(les),
            "map_score": {s: map_score(row[s]) for s in SETS},
            "volume_auroc": {s: row[s]["volume_auroc"][volume_score_name] for s in SETS},
        }
    return out


SWEEP_SAMPLE = 60_000  # voxels per lesioned volume for AP / best Dice in the sweep (the final rows use all)
SHIPPED = {"residual": "input", "minpool": 1, "avgpool": 5, "erode": 1}
GRID = [
    {"residual": r, "minpool": mp, "avgpool": ap, "erode": e}
    for r, (mp, ap), e in itertools.product(("input", "gated"), ((1, 5), (3, 5), (1, 3)), (1, 3))
]


def map_score(f: dict[str, Any]) -> float:
    return float(np.mean([f["all"]["pixel_ap"], f["all"]["best_dice"], f["all"]["dice_at_threshold"]]))


def evaluate(
    net: Any, vols: dict[str, list], settings: list[dict[str, Any]], prep: str, buckets: bool = True
) -> list[dict[str, Any]]:
    """Figures of each setting on clean (calibrating the map threshold on its healthy volumes) and shifted."""
    rows = []
    for setting in settings:
        clean = figures(net, vols["clean"], setting, None, buckets) if vols["clean"] else None
        shifted = figures(net, vols["shifted"], setting, None if clean is None else clean["map_threshold"], buckets)
        secs = [v["seconds"] for s in SETS for v in vols[s]]
        rows.append(
            {"prep": prep, **setting, "clean": clean, "shifted": shifted, "seconds_per_volume": float(np.mean(secs))}
        )
        logger.info("%s %s: clean %s shifted %s", prep, setting, clean and clean["all"], shifted["all"])
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst case of clean and shifted: the map setting, then the volume score (see ``selection``)."""
    sets = [s for s in SETS if rows[0][s] is not None]
    best = max(rows, key=lambda r: min(map_score(r[s]) for s in sets))
    worst = {k: min(best[s]["volume_auroc"][k] for s in sets) for k in best[sets[0]]["volume_auroc"]}
    return {
        "setting": {k: best[k] for k in ("prep", *SHIPPED)},
        "volume_score": max(worst, key=worst.__getitem__),
        "worst_case_map_score": min(map_score(best[s]) for s in sets),
        "worst_case_volume_auroc": max(worst.values()),
        "sets": sets,
    }


def cmd_report(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    args.shipped_prep = args.shipped_prep or bundle_prep()
    report: dict[str, Any] = {"machine": describe_machine(), "data": {}, "sweep": {}, "chosen": {}, "paired": {}}
    grid = [SHIPPED] + [g for g in GRID if g != SHIPPED]
    for det in args.detectors:  # the same fix budget for both detectors, on every case cached for them
        net = detector(det)
        rows = []
        for prep in args.preps:
            names = {s: cached_cases(args.cache, det, prep, s) for s in SETS}
            if not names["shifted"]:
                continue
            vols = {s: load_cache(args.cache, det, prep, s, names[s]) for s in SETS}
            report["data"][f"{det}_{prep}"] = {s: sorted(n) for s, n in names.items()}
            rows += evaluate(net, vols, grid if args.sweep else [SHIPPED], prep, buckets=not args.sweep)
            report.setdefault("healthy_sources", {})[f"{det}_{prep}"] = {
                s: healthy_sources(net, vols[s], SHIPPED) for s in SETS if vols[s]
            }
        if rows:
            report["sweep"][det] = rows
            report["chosen"][det] = chosen = choose(rows)
            finals = []  # the shipped and the chosen setting on every cached case, per size bucket
            shipped: dict[str, Any] = {"prep": args.shipped_prep, **SHIPPED}
            for setting in {json.dumps(x, sort_keys=True): x for x in (shipped, chosen["setting"])}.values():
                prep = str(setting["prep"])
                names = {s: cached_cases(args.cache, det, prep, s) for s in SETS}
                vols = {s: load_cache(args.cache, det, prep, s, names[s]) for s in SETS}
                finals += evaluate(net, vols, [{k: setting[k] for k in SHIPPED}], prep)
            report.setdefault("final", {})[det] = finals
            if det == "mim":  # the stage diagnosis inside the lesions, with the bundle's weights and flagging
                names = {s: cached_cases(args.cache, det, args.shipped_prep, s) for s in SETS}
                stage_vols = {s: load_cache(args.cache, det, args.shipped_prep, s, names[s]) for s in SETS}
                report["lesion_stages"] = lesion_stages(stage_vols)
                if args.flagging_cache:
                    report["flagging_alternatives"] = flagging_alternatives(
                        args.flagging_cache, chosen["setting"], chosen["volume_score"]
                    )
    if len(args.detectors) == 2:  # MIM beside AR on the cases cached for both (the bundle's preprocessing)
        common = {
            s: set.intersection(*(cached_cases(args.cache, d, args.shipped_prep, s) for d in args.detectors))
            for s in SETS
        }
        report["paired_cases"] = {s: sorted(n) for s, n in common.items()}
        for det in args.detectors:
            net = detector(det)
            settings = [SHIPPED] + ([report["chosen"][det]["setting"]] if det in report["chosen"] else [])
            for setting in {json.dumps(x, sort_keys=True): x for x in settings}.values():
                prep = setting.get("prep", args.shipped_prep)
                names = {s: common[s] & cached_cases(args.cache, det, prep, s) for s in SETS}
                vols = {s: load_cache(args.cache, det, prep, s, names[s]) for s in SETS}
                fix = {k: setting[k] for k in SHIPPED}
                report["paired"].setdefault(det, []).extend(evaluate(net, vols, [fix], prep))
    report["seconds"] = time.perf_counter() - start
    report["selection"] = (
        "per detector, the same budget: the map setting (preprocessing, residual inside the flagged "
        "tokens or everywhere, min/mean pool, rim erosion) with the highest min(clean, shifted) mean "
        "of pixel AP, best Dice and Dice at the threshold calibrated on the CLEAN healthy validation "
        "volumes; then the volume score with the highest min(clean, shifted) AUROC"
    )
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    write_markdown(args.out.with_suffix(".md"), report)


def _row_lines(r: dict[str, Any], label: str) -> list[str]:
    f3 = "{:.3f}".format
    out = []
    for s in SETS:
        f = r[s]
        if f is None:
            out.append(
                f"| {label} | {r['prep']} | {r['residual']} | {r['minpool']}/{r['avgpool']} | {r['erode']} | {s} |"
                " not run |" + " |" * (3 + len(SIZE_BUCKETS))
            )
            continue
        per_b = []
        for b in SIZE_BUCKETS:
            x = f.get(b)
            per_b.append(
                "-"
                if x is None
                else f"{x['lesions']} / {f3(x['detected_flagged'])} / {f3(x['detected_map'])}"
                f" / {f3(x['pixel_ap'])} / {f3(x['best_dice'])} / {f3(x['dice_at_threshold'])}"
            )
        va = " / ".join(f3(x) for x in f["volume_auroc"].values())
        out.append(
            f"| {label} | {r['prep']} | {r['residual']} | {r['minpool']}/{r['avgpool']} | {r['erode']} | {s} | "
            f"{f3(f['all']['pixel_ap'])} | {f3(f['all']['best_dice'])} | {f3(f['all']['dice_at_threshold'])} | "
            f"{' | '.join(per_b)} | {va} |"
        )
    return out


def _table_head(scores: list[str]) -> list[str]:
    buckets = " | ".join(f"{b}: lesions / det. flag / det. map / AP / best Dice / Dice@thr" for b in SIZE_BUCKETS)
    return [
        "| detector | prep | residual | min/mean pool | rim erosion | set | pixel AP | best Dice | Dice@thr | "
        f"{buckets} | volume AUROC: {' / '.join(VOLUME_SCORES.get(k, k) for k in scores)} |",
        "|" + "---|" * (10 + len(SIZE_BUCKETS)),
    ]


def _stage_lines(report: dict[str, Any]) -> list[str]:
    """The lesion-stage and flagging-alternative sections of the page."""
    f3 = "{:.3f}".format
    lines: list[str] = []
    st = report.get("lesion_stages")
    if st:
        lines += [
            "",
            "## Inside the lesions, stage by stage (MIM-OOD, the bundle's flagging)",
            "",
            f"Token NLL reference: 95th percentile of the clean healthy brains' token NLLs ({f3(st['nll_p95'])}). "
            "Healthy brains above it: "
            + "; ".join(f"{s} {f3(h['nll_above_p95'])} (flagged {f3(h['flagged'])})" for s, h in st["healthy"].items())
            + ". A lesion whose 'NLL > p95' fraction is at the healthy rate is as likely as healthy tissue to the "
            "in-painter: no NLL threshold flags it without flagging as much healthy brain.",
            "",
            "| set | case | lesion voxels | flagged | NLL > p95 | tokenizer recon residual | residual |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['set']} | {r['case']} | {r['voxels']} | {f3(r['flagged'])} | {f3(r['nll_above_p95'])} | "
            f"{f3(r['recon_residual'])} | {f3(r['residual'])} |"
            for r in st["lesioned"]
        ]
    alt = report.get("flagging_alternatives")
    if alt:
        lines += [
            "",
            "## Other flaggings / weights with the chosen post-processing (MIM-OOD)",
            "",
            "| variant | healthy brain flagged (clean / shifted) | lesion flagged (mean) | lesioned volumes < 10 % "
            "flagged | map score (clean / shifted) | volume AUROC (clean / shifted) |",
            "|---|---|---|---|---|---|",
        ]
        for name, a in alt.items():
            lines.append(
                f"| {name} | {' / '.join(f3(x) for x in a['healthy_flagged'].values())} | "
                f"{f3(a['lesion_flagged_mean'])} | {a['lesions_under_10pct_flagged']} of {a['lesioned_volumes']} | "
                f"{' / '.join(f3(x) for x in a['map_score'].values())} | "
                f"{' / '.join(f3(x) for x in a['volume_auroc'].values())} |"
            )
    return lines


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    f3 = "{:.3f}".format
    first = next(iter(report["sweep"].values()))[0]  # the volume scores the report measured (older reports: fewer)
    scores = list(next(first[s] for s in SETS if first[s] is not None)["volume_auroc"])
    lines = [
        "# MIM-OOD and the AR baseline on clean and shifted-site validation volumes",
        "",
        f"Written by `scripts/bench_mim_shift.py report` ({report['machine']}, {report['seconds']:.0f} s); validation "
        "only, never the test split. clean = demo validation (healthy) + validation_lesion; shifted = `medood data "
        "shifted-site --seed 0 --subjects 12`. Map threshold: split-conformal (alpha "
        f"{MAP_ALPHA}) on the CLEAN healthy validation voxels of the same detector and setting (what the shipped "
        "calibration gives a new site). A lesion component counts as detected ('det. map') with a map voxel "
        "above that threshold, 'det. flag' with a flagged (in-painted / resampled) token.",
        "",
        f"Selection: {report['selection']}.",
        "",
        "## MIM-OOD beside the AR baseline (the same cases)",
        "",
        f"Cases: {report.get('paired_cases')}.",
        "",
        *_table_head(scores),
    ]
    for det, rows in report.get("paired", {}).items():
        for i, r in enumerate(rows):
            lines += _row_lines(r, f"{det} {'shipped' if i == 0 else 'chosen'}")
    lines += [
        "",
        "## Every cached case: the shipped setting and the chosen one, per lesion size",
        "",
        *_table_head(scores),
    ]
    for det, rows in report.get("final", {}).items():
        for i, r in enumerate(rows):
            lines += _row_lines(r, f"{det} {'shipped' if i == 0 else 'chosen'}")
    lines += ["", "## Fix sweep (shipped setting first, then the 6 best by worst case of clean and shifted)", ""]
    for det, rows in report["sweep"].items():
        sets = report["chosen"][det]["sets"]
        ranked = sorted(rows[1:], key=lambda r: -min(map_score(r[s]) for s in sets))[:6]
        lines += [f"### {det} (cases: {report['data']})" if det == "mim" else f"### {det}", "", *_table_head(scores)]
        for r in [rows[0], *ranked]:
            lines += _row_lines(r, det)
        lines.append("")
    lines += [
        "## Where the healthy volumes' high values come from (shipped post-processing)",
        "",
        "| detector / prep | set | tokens flagged | recon residual p99 | residual p99 | token NLL p99 | "
        "top 0.1 % in flagged | top 0.1 % on 3-voxel rim | recon / residual at top 0.1 % | volume score |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, per in report.get("healthy_sources", {}).items():
        for s, h in per.items():
            lines.append(f"| {key} | {s} | " + " | ".join(f3(x) for k, x in h.items() if k != "per_site") + " |")
    lines += [
        "",
        "Per site (healthy volumes): tokens flagged / tokenizer reconstruction residual p99 / volume score",
        "",
    ]
    for key, per in report.get("healthy_sources", {}).items():
        for s, h in per.items():
            sites = "; ".join(f"{site}: " + " / ".join(f3(x) for x in d.values()) for site, d in h["per_site"].items())
            lines.append(f"- {key}, {s}: {sites}")
    lines += _stage_lines(report)
    lines += ["", "## Chosen (validation only)", ""]
    for det, c in report["chosen"].items():
        lines.append(
            f"- {det}: {c['setting']}, volume score {c['volume_score']} (worst-case map score "
            f"{f3(c['worst_case_map_score'])}, worst-case volume AUROC {f3(c['worst_case_volume_auroc'])}, "
            f"on {c['sets']})"
        )
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
    cp.add_argument("--limit", type=int, help="only the first N healthy and N lesioned cases of each set")
    cp.add_argument("--weights", type=Path, help="another checkpoint of the detector (e.g. a retrained one)")
    cp.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a detector setting (repeatable)")
    rp = sub.add_parser("report")
    rp.add_argument("--detectors", nargs="+", default=["mim", "ar"])
    rp.add_argument("--preps", nargs="+", default=["scale", "nyul"], choices=("scale", "nyul"))
    rp.add_argument("--sweep", action="store_true", help="every fix setting (default: the shipped one only)")
    rp.add_argument(
        "--shipped-prep",
        choices=("scale", "nyul"),
        help="the preprocessing of the 'shipped' rows and of the MIM / AR pairing (default: the bundle's own)",
    )
    rp.add_argument(
        "--flagging-cache",
        action="append",
        metavar="NAME=DIR",
        help="MIM stage caches of another flagging or weights (compute --set/--weights), reported beside",
    )
    rp.add_argument("--out", type=Path, default=OUT / "mim_shift.json")
    for p in (cp, rp):
        p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "mim_shift_cache")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    {"landmarks": cmd_landmarks, "compute": cmd_compute, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
