"""Choose the MIM-OOD inference settings on VALIDATION data only (never the test set).

Scores the demo ``validation_lesion`` volumes (lesioned twins of the healthy validation subjects) and the healthy
``validation`` volumes with the trained detector for a small grid of inference settings (residual variant, token
anomaly threshold, mask dilation, in-painting steps, smoothing), in the preprocessed 2 mm space, and reports per
setting: pixel AP and best Dice on the validation lesions, the Dice at the healthy ``map_percentile`` threshold,
and the volume AUROC lesion-vs-healthy. Writes ``--out`` (JSON). The bundle's defaults are set from this table.

    .venv/bin/python scripts/tune_mim_validation.py [--ckpt bundles/.../models/model.pt]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from medood.data.datalist import bundle_datalist as datalist
from medood.metrics import auroc, best_dice, dice_at_threshold, pixel_ap
from medood.utils.checkpoints import load_state as load_weights
from medood.utils.io import atomic_write_text
from medood.utils.reduce import reduce_map

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation"
logger = logging.getLogger("tune_mim")

GRID = {
    "residual": ["input", "gated", "recon"],
    "atd_threshold": [0.2, 0.3, 0.5, 0.7],
    "mask_dilation": [0, 1],
    "mim_steps": [1, 4],
    "pool": [(3, 3), (1, 3), (3, 5)],
}


def evaluate(net: Any, healthy: list, lesioned: list, percentile: float) -> dict[str, float]:
    """Validation figures of the detector's current settings."""
    with torch.no_grad():
        hmaps = [net.predict_map(x[None])[0] for x in healthy]
        lmaps = [net.predict_map(d["image"][None])[0] for d in lesioned]
    hv = torch.cat([m[x > 0].flatten() for m, x in zip(hmaps, healthy)])
    g = torch.Generator().manual_seed(0)
    thr = float(torch.quantile(hv[torch.randperm(hv.numel(), generator=g)[:2_000_000]], percentile / 100))
    maps = [m.numpy() for m in lmaps]
    masks = [(d["label"] > 0.5).numpy() for d in lesioned]
    fgs = [(d["image"] > 0).numpy() for d in lesioned]
    scores = [float(reduce_map(m[None], "topk", 0.001, (x > 0)[None])) for m, x in zip(hmaps, healthy)]
    scores += [float(reduce_map(m[None], "topk", 0.001, (d["image"] > 0)[None])) for m, d in zip(lmaps, lesioned)]
    y = [0] * len(hmaps) + [1] * len(lmaps)
    return {
        "pixel_ap": pixel_ap(maps, masks, foreground=fgs),
        "best_dice": best_dice(maps, masks, foreground=fgs)[0],
        "dice_at_healthy_threshold": dice_at_threshold(maps, masks, thr, foreground=fgs).pooled,
        "volume_auroc": auroc(np.array(scores), np.array(y)),
        "threshold": thr,
    }


def apply(net: Any, cfg: dict[str, Any]) -> None:
    net.residual, net.atd_threshold = cfg["residual"], cfg["atd_threshold"]
    net.mask_dilation, net.mim_steps = cfg["mask_dilation"], cfg["mim_steps"]
    net.minpool, net.avgpool = cfg["pool"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset-dir", type=Path, default=ROOT / "demo_data" / "brain_mri")
    ap.add_argument("--ckpt", type=Path, default=BUNDLE / "models" / "model.pt")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "mim_validation_tuning.json")
    ap.add_argument("--map-percentile", type=float, default=99.5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(0)

    p = ConfigParser()
    p.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    p.update({"bundle_root": str(BUNDLE)})
    net = p.get_parsed_content("network")
    load_weights(net, args.ckpt)
    net.eval()
    pre = p.get_parsed_content("preprocessing")
    # images and masks through the same preprocessing (the mask as a second key, nearest interpolation)
    from monai.transforms import Compose, CropForegroundd, EnsureTyped, Orientationd, ResizeWithPadOrCropd, Spacingd

    from medood.data.transforms import LoadVolumed
    from medood.transforms import ScaleNonzeroPercentiled

    fov, pixdim = p["fov"], p["pixdim"]
    joint = Compose(
        [
            LoadVolumed(["image", "label"]),
            Orientationd(["image", "label"], "RAS", labels=None),
            Spacingd(["image", "label"], pixdim, mode=("bilinear", "nearest")),
            ScaleNonzeroPercentiled("image"),
            CropForegroundd(["image", "label"], source_key="image", allow_smaller=True),
            ResizeWithPadOrCropd(["image", "label"], fov),
            EnsureTyped(["image", "label"], dtype=torch.float32),
        ]
    )
    lesion_cases = datalist(args.dataset_dir, "validation_lesion", keep=["label"])
    healthy_cases = datalist(args.dataset_dir, "validation")
    lesioned = [joint(c) for c in lesion_cases]
    healthy = [pre(c)["image"] for c in healthy_cases]
    del pre
    # coordinate search from the bundle defaults: vary one setting at a time, keep the best by pixel AP
    current = {"residual": "input", "atd_threshold": 0.5, "mask_dilation": 1, "mim_steps": 1, "pool": (3, 3)}
    results: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    for key, options in GRID.items():
        best = None
        for value in options:
            cfg = {**current, key: value}
            tag = json.dumps(cfg, sort_keys=True, default=list)
            if tag not in seen:
                apply(net, cfg)
                seen[tag] = {
                    **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                    **evaluate(net, healthy, lesioned, args.map_percentile),
                }
                logger.info("%s", seen[tag])
                results.append(seen[tag])
            if best is None or seen[tag]["pixel_ap"] > best[1]:
                best = (value, seen[tag]["pixel_ap"])
        current[key] = best[0]
    results.sort(key=lambda r: -r["pixel_ap"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "data": "demo validation_lesion (lesioned twins of the validation subjects) + healthy validation volumes,"
        " 2 mm model space; the test set is not used",
        "map_percentile": args.map_percentile,
        "selected": {k: (list(v) if isinstance(v, tuple) else v) for k, v in current.items()},
        "results": results,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    logger.info("best by pixel AP: %s", results[0])


if __name__ == "__main__":
    main()
