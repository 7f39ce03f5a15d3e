"""End results of ``scripts/diagnose_mim.py``: the MIM-OOD bundle's own inference pipeline on validation volumes.

Healthy validation volumes first (their pass also calibrates the detector, as ``configs/calibrate.yaml`` does), then
the lesioned ones; the figures come from :func:`medood.metrics.files.evaluate_outputs` as in ``scripts/bench_mim.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from monai.bundle import ConfigParser
from torch import Tensor

from medood.benchmark.bundles import bundle_parser, calibrated_map_quality, timed_evaluator_run
from medood.metrics import auroc
from medood.metrics.files import read_scores

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mim_brain_mri_anomaly_segmentation"


def parser_for(configs: list[str], **overrides: Any) -> ConfigParser:
    """The bundle's configs merged, with ``bundle_root`` and ``overrides`` set."""
    return bundle_parser(BUNDLE, configs, **overrides)


class OracleFlags:
    """Stands in for ``MIMDetector.flag`` in the pipeline: the true lesion tokens (dilated) of each volume, in order.

    A forward pre-hook on the detector calls :meth:`next_volume`; the masks must match the pipeline's slices.
    """

    def __init__(self, masks: list[Tensor]) -> None:
        self.masks, self.volume, self.pointer = masks, -1, 0

    def next_volume(self, *_: Any) -> None:
        if self.volume >= 0 and self.pointer != len(self.masks[self.volume]):
            raise RuntimeError(
                f"volume {self.volume}: {self.pointer} slices seen, {len(self.masks[self.volume])} expected"
            )
        self.volume, self.pointer = self.volume + 1, 0

    def __call__(self, tokens: Tensor, positions: Tensor) -> Tensor:
        m = self.masks[self.volume][self.pointer : self.pointer + len(tokens)]
        if m.shape != tokens.shape:
            raise RuntimeError(
                f"oracle masks {tuple(m.shape)} do not match the pipeline's tokens {tuple(tokens.shape)}"
            )
        self.pointer += len(tokens)
        return m.to(tokens.device)


def run_pipeline(net: Any, datalist: list[dict], out: Path, dataset_dir: Path, calibrate: bool) -> list[float]:
    """The bundle's inference evaluator on ``datalist`` (+ calibration on it); network seconds per volume."""
    p = parser_for(["inference.yaml"], dataset_dir=str(dataset_dir), output_dir=str(out))
    p["network"], p["datalist"] = net, datalist
    if calibrate:
        cal = {"_target_": "medood.handlers.CalibrationHandler", "detector": "@network", "foreground": "nonzero"}
        p["handlers"] = [*p["handlers"], cal]
    return timed_evaluator_run(p).network_seconds


def end_result(net: Any, mode: str, lists: dict[str, list], work: Path, dataset_dir: Path, oracle: dict) -> dict:
    """Healthy pass (calibration) then lesion pass through the bundle pipeline; the bench's metrics."""
    if mode in ("atd", "nll", "union", "oracle"):
        net.flagging = "atd" if mode == "oracle" else mode
    hooks = []
    times = []
    for part in ("healthy", "lesion"):
        if mode == "oracle":
            flagger = OracleFlags(oracle[part])
            net.flag = flagger
            hooks.append(net.register_forward_pre_hook(flagger.next_volume))
        try:
            times += run_pipeline(net, lists[part], work / mode / part, dataset_dir, calibrate=part == "healthy")
        finally:
            for h in hooks:
                h.remove()
            hooks.clear()
            net.__dict__.pop("flag", None)
    map_percentile = float(parser_for(["inference.yaml"])["map_percentile"])
    v = calibrated_map_quality(work / mode / "lesion", lists["lesion"], net, map_percentile)
    h, _ = read_scores(work / mode / "healthy" / "scores.csv")
    ls, _ = read_scores(work / mode / "lesion" / "scores.csv")
    y = np.array([0] * len(h) + [1] * len(ls))
    return {
        "seconds_per_volume": float(np.mean(times)),
        "pixel_ap": v["pixel_ap"],
        "best_dice": v["best_dice"],
        "dice_at_healthy_threshold": v["dice"],
        "slice_ap": v["slice_ap"],
        "volume_auroc": auroc(np.array(list(h.values()) + list(ls.values())), y),
        "healthy_threshold": v["threshold"],
    }
