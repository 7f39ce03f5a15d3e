"""Benchmark MIM-OOD against the AR baselines and plain VQ-VAE reconstruction, in one run.

All methods share the shipped tokenizer and run through the flagship bundle's own inference pipeline (loading,
preprocessing, detector, Invertd, writing) on the same demo test volumes:

* ``mim``: the shipped MIM-OOD detector (models/model.pt);
* ``vqvae_ar_cached``: the AR prior (models/model_ar.pt), KV-cached, every restoration of a volume batched: the
  fastest AR restoration we could build;
* ``vqvae_ar``: the same prior run as the authors' LSR precursor ran it (slice by slice, 15 restorations, a full
  forward pass per resampled token, no cache). It restores exactly what the cached path restores (same random
  draws; the script checks the maps agree), so its quality figures are the cached run's; only the time differs.
  Being slow, it is timed on ``--lsr-volumes`` volumes;
* ``vqvae_recon``: the tokenizer's own reconstruction residual (calibrated here on the healthy validation set,
  the way the bundle calibrates the others).

Writes ``--out`` (JSON) and the same name with ``.md`` (a table). Usage::

    .venv/bin/python scripts/bench_mim.py [--dataset-dir demo_data/brain_mri] [--lsr-volumes 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from medood.benchmark.bundles import bundle_parser, calibrated_map_quality, timed_evaluator_run
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.script import add_common_arguments, start
from medood.benchmark.tables import md_table
from medood.detectors import VQVAEReconstructionDetector
from medood.utils.checkpoints import load_state as load_weights

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation"
CONFIGS = BUNDLE / "configs"
logger = logging.getLogger("bench_mim")


def parser_for(configs: list[str], **overrides: Any) -> ConfigParser:
    return bundle_parser(BUNDLE, configs, meta=True, **overrides)


def run_inference(
    configs: list[str],
    out: Path,
    dataset_dir: Path,
    network: torch.nn.Module | None = None,
    datalist: list | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the bundle's evaluator; return per-volume network and pipeline seconds and the parser."""
    p = parser_for(configs, dataset_dir=str(dataset_dir), output_dir=str(out), **overrides)
    if network is not None:
        p["network"] = network
    if datalist is not None:
        p["datalist"] = datalist
    net = p.get_parsed_content("network")
    if network is None:
        load_weights(net, p.get_parsed_content("ckpt_path"))
    net.eval()
    run = timed_evaluator_run(p)
    return {
        "network_s": float(np.mean(run.network_seconds)),
        "pipeline_s": run.wall_seconds / run.n,
        "n": run.n,
        "net": net,
        "datalist": run.datalist,
        "parser": p,
    }


def quality(out: Path, datalist: list, net: Any, map_percentile: float) -> dict[str, float]:
    q = calibrated_map_quality(out, datalist, net, map_percentile)
    return {
        "pixel_ap": q["pixel_ap"],
        "best_dice": q["best_dice"],
        "dice_at_val_threshold": q["dice"],
        "slice_ap": q["slice_ap"],
        "volume_auroc": q["volume_auroc"],
        "val_threshold": q["threshold"],
    }


def calibrate(detector: torch.nn.Module, dataset_dir: Path) -> None:
    """The bundle's own calibration pass (healthy validation volumes, after Invertd)."""
    p = parser_for(
        ["inference.yaml", "train_tokens.yaml"],
        dataset_dir=str(dataset_dir),
        stage="bench",
        init_stage="vqvae",
        ckpt_path="",
    )
    p["network"] = detector
    handlers = p["calibrate#handlers"]
    idx = next(i for i, h in enumerate(handlers) if str(h.get("_target_", "")).endswith("CalibrationHandler"))
    p[f"calibrate#handlers#{idx}#save_path"] = None  # calibrate in memory, write nothing
    p.get_parsed_content("calibrate#evaluator").run()


def main() -> None:
    # runs repeat into their own output folders (medood.io.run_folder): a rerun replaces the last one;
    # set here, not at import, so importing this script (tests) leaves the environment alone
    os.environ.setdefault("MEDOOD_RUN_MODE", "overwrite")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, ROOT / "docs" / "benchmarks" / "mim.json", render=False)
    ap.add_argument("--dataset-dir", type=Path, default=ROOT / "demo_data" / "brain_mri")
    ap.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench_mim")
    ap.add_argument("--lsr-volumes", type=int, default=2, help="volumes for the slow LSR-style AR timing")
    ap.add_argument(
        "--reuse-ar",
        type=Path,
        default=None,
        help="JSON {vqvae_ar: {...}, vqvae_ar_cached: {...}} measured by an earlier run of this script with the same"
        " weights on the same machine: the AR runs (~25 min on 2 cores) are not repeated; the report says so",
    )
    args = ap.parse_args()
    start(args)
    os.environ.setdefault("MEDOOD_PROGRESS", "0")
    map_percentile = float(parser_for(["inference.yaml"])["map_percentile"])
    res: dict[str, Any] = {}

    # warm-up (lazy imports, allocator, thread pools): one volume through the pipeline, not counted
    first = parser_for(["inference.yaml"], dataset_dir=str(args.dataset_dir)).get_parsed_content("datalist")[:1]
    run_inference(["inference.yaml"], args.work / "warmup", args.dataset_dir, datalist=first)
    mim = run_inference(["inference.yaml"], args.work / "mim", args.dataset_dir)
    res["mim"] = {
        "seconds_per_volume": mim["network_s"],
        **quality(args.work / "mim", mim["datalist"], mim["net"], map_percentile),
    }
    logger.info("mim: %s", res["mim"])

    reused = json.loads(args.reuse_ar.read_text()) if args.reuse_ar else None
    if reused is not None:
        res["vqvae_ar_cached"], res["vqvae_ar"] = reused["vqvae_ar_cached"], reused["vqvae_ar"]
    else:
        ar = run_inference(["inference.yaml", "inference_ar.yaml"], args.work / "vqvae_ar_cached", args.dataset_dir)
        res["vqvae_ar_cached"] = {
            "seconds_per_volume": ar["network_s"],
            **quality(args.work / "vqvae_ar_cached", ar["datalist"], ar["net"], map_percentile),
        }
        logger.info("vqvae_ar_cached: %s", res["vqvae_ar_cached"])

        subset = ar["datalist"][: args.lsr_volumes]
        lsr = run_inference(
            ["inference.yaml", "inference_ar.yaml"],
            args.work / "vqvae_ar_lsr",
            args.dataset_dir,
            datalist=subset,
            use_cache=False,
        )
        diffs = []
        for item in subset:
            name = Path(item["image"]).name.replace(".nii.gz", "")
            a = np.asarray(nib.load(str(args.work / "vqvae_ar_lsr" / f"{name}_anomaly_map.nii.gz")).dataobj)  # type: ignore[attr-defined]
            b = np.asarray(nib.load(str(args.work / "vqvae_ar_cached" / f"{name}_anomaly_map.nii.gz")).dataobj)  # type: ignore[attr-defined]
            diffs.append(float(np.abs(a - b).max()))
        res["vqvae_ar"] = {
            **res["vqvae_ar_cached"],
            "seconds_per_volume": lsr["network_s"],
            "timed_on_volumes": len(subset),
            "max_map_difference_to_cached": max(diffs),
        }
    logger.info("vqvae_ar (LSR-style): %s", res["vqvae_ar"])

    recon_det = (
        VQVAEReconstructionDetector(
            tokenizer=copy.deepcopy(mim["net"].tokenizer), slice_axis=2, score_reduction="topk", score_k=0.001
        )
        .mark_fitted()
        .eval()
    )
    calibrate(recon_det, args.dataset_dir)
    rec = run_inference(["inference.yaml"], args.work / "vqvae_recon", args.dataset_dir, network=recon_det)
    res["vqvae_recon"] = {
        "seconds_per_volume": rec["network_s"],
        **quality(args.work / "vqvae_recon", rec["datalist"], recon_det, map_percentile),
    }
    logger.info("vqvae_recon: %s", res["vqvae_recon"])

    report = {
        **bench_header(conventions=False),
        "n_test_volumes": mim["n"],
        "methods": res,
        "speed_ratio_ar_over_mim": res["vqvae_ar"]["seconds_per_volume"] / res["mim"]["seconds_per_volume"],
        "speed_ratio_cached_ar_over_mim": res["vqvae_ar_cached"]["seconds_per_volume"]
        / res["mim"]["seconds_per_volume"],
        "pipeline_over_network": mim["pipeline_s"] / mim["network_s"],
        "pipeline_seconds_per_volume": mim["pipeline_s"],
        "ar_results_reused_from": str(args.reuse_ar) if args.reuse_ar else None,
        "notes": {
            "seconds_per_volume": "detector forward on one preprocessed 80x96x80 volume (2 mm), mean over volumes",
            "pipeline_over_network": "whole bundle inference per volume (read, transforms, detector, Invertd, write)"
            " over the detector forward alone, MIM-OOD",
            "best_dice": "oracle: threshold chosen on the test labels (as papers report it)",
            "dice_at_val_threshold": f"threshold = {map_percentile}th percentile of healthy validation map values",
            "vqvae_ar": "LSR-style timing on the first volumes only; quality = the cached run (identical restorations)",
        },
    }
    if reused is not None:
        report["notes"]["ar_runs"] = f"AR figures reused from {args.reuse_ar}: {reused.get('source', '')}"
    write_page(args.out, report, markdown(report), default=float)


def markdown(report: dict[str, Any]) -> str:
    """The page, from the JSON this script writes."""
    rows = []
    for k in ("mim", "vqvae_ar", "vqvae_ar_cached", "vqvae_recon"):
        r = report["methods"][k]
        figures = ("pixel_ap", "best_dice", "dice_at_val_threshold", "slice_ap", "volume_auroc")
        rows.append([k, f"{r['seconds_per_volume']:.2f}", *(f"{r[f]:.3f}" for f in figures)])
    header = ["method", "s / volume", "pixel AP", "best Dice (oracle)", "Dice @ val thr", "slice AP", "volume AUROC"]
    return "\n".join(
        [
            f"# MIM-OOD benchmark\n\nMachine: {report['machine']}. {report['n_test_volumes']} demo test volumes "
            "(2 mm).\n",
            *md_table(header, rows),
            "",
            f"Speed ratio LSR-style AR / MIM-OOD: {report['speed_ratio_ar_over_mim']:.1f}x; "
            f"KV-cached AR / MIM-OOD: {report['speed_ratio_cached_ar_over_mim']:.1f}x; "
            f"pipeline / network (MIM-OOD): {report['pipeline_over_network']:.2f}.",
            "",
            *[f"- {k}: {v}" for k, v in report["notes"].items()],
            "",
        ]
    )


if __name__ == "__main__":
    main()
