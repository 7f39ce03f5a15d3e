"""MECAM against every post-hoc detector on the same multi-exit classifier (``scripts/bench_mecam.py``).

Per task (a MECAM bundle's demo task): the bundle's shipped detector, preprocessing and datalists (parsed from its
configs); every post-hoc detector on the classifier's final exit (:func:`medood.engines.posthoc.evaluate_posthoc`),
MECAM and its 15 exit subsets, and MECAM's scoring cost over the plain forward pass for each ``cam_grid``
(:func:`run_task`). :func:`run_mecam_bench` gathers the tasks into the JSON of ``docs/benchmarks/mecam.json``
(the page: :mod:`medood.benchmark.mecam_page`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader

from medood.benchmark.bundles import (
    batch_images,
    bundle_parser,
    class_folder_sets,
    collect_scores,
    item_loader,
    load_network,
    split_evaluation_items,
)
from medood.benchmark.report import bench_header
from medood.benchmark.runner import BUNDLES as BUNDLES_DIR
from medood.benchmark.tables import mean_over_sets
from medood.benchmark.timing import batch_record, forward_ratio, over_batches
from medood.data.contrasts import contrast_datalist, contrast_evaluation_datalist
from medood.detectors.mecam import CAM_GRIDS, MECAMDetector
from medood.engines.posthoc import evaluate_posthoc
from medood.metrics.tables import METRICS, results_table
from medood.networks.nets import FinalExitClassifier

__all__ = ["BUNDLES", "NERO_K", "bundle_parts", "cost", "datalists", "mecam_scores", "run_mecam_bench", "run_task"]

logger = logging.getLogger(__name__)

#: task -> its MECAM bundle
BUNDLES = {
    "dermoscopy": "mecam_dermoscopy_ood_classification",
    "pathology": "mecam_pathology_ood_classification",
    "brain_mri": "mecam_brain_mri_ood_classification",
}
#: NERO's ``k`` as a fraction of the feature width (the NERO code's ResNet-18 ratio; 175 exceeds these widths)
NERO_K = 175 / 512


def bundle_parts(task: str, data: Path) -> tuple[ConfigParser, MECAMDetector, Any]:
    """The bundle's parsed configs (inference + evaluate), its shipped detector (eval mode) and preprocessing."""
    bundle = BUNDLES_DIR / BUNDLES[task]
    parser = bundle_parser(bundle, ["inference.yaml", "evaluate.yaml"], dataset_dir=str(data))
    det = load_network(parser, "network_def", bundle / "models" / "model.pt")
    return parser, det, parser.get_parsed_content("preprocessing")


def datalists(task: str, parser: ConfigParser, data: Path) -> tuple[list, list, dict[str, list]]:
    """``(train, ID test, {ood_set: items})`` as the bundle's train.yaml / evaluate.yaml list them."""
    if task != "brain_mri":
        return class_folder_sets(data, parser["class_names"])
    contrasts = parser["contrasts"]
    train = contrast_datalist(data, "training", contrasts)
    items = contrast_evaluation_datalist(
        data, parser["id_key"], parser["ood_key"], contrasts, parser["ood_slots"], parser["ood_skip"]
    )
    return (train, *split_evaluation_items(items))


def mecam_scores(det: MECAMDetector, loader: DataLoader) -> dict[str, torch.Tensor]:
    """``{"mecam": (N,), "exits_<digits>": (N,) for the 15 subsets}`` of every image of ``loader``."""
    return collect_scores(loader, lambda x: {"mecam": det.score(x).image_score, **det.score_subsets(x, "all")})


def cost(det: MECAMDetector, batches: Sequence[torch.Tensor], repeats: int) -> dict[str, Any]:
    """MECAM scoring (the detector's ``cam_grid``) vs the classifier's plain forward pass (all exit logits).

    On the same batches: median of ``repeats`` interleaved pairs (:func:`medood.benchmark.timing.forward_ratio`).
    """
    ratio, t_fwd, t_mecam = forward_ratio(det.net, batches, over_batches(det.score, batches), repeats)
    shape = batch_record(batches, repeats)
    return {"mecam_over_forward": ratio, "forward_seconds": t_fwd, "mecam_seconds": t_mecam, **shape,
            "ms_per_image_mecam": 1000 * t_mecam / shape["images"], "cam_grid": det.cam_grid}  # fmt: skip


def grid_variants(det: MECAMDetector, id_loader: DataLoader, sets: dict[str, DataLoader], batches: list,
                  repeats: int) -> dict[str, Any]:  # fmt: skip
    """Mean metrics and cost of MECAM with each ``cam_grid`` (the bundle's setting is restored afterwards)."""
    configured, out = det.cam_grid, {}

    def scores(loader: DataLoader) -> torch.Tensor:
        return collect_scores(loader, lambda x: {"mecam": det.score(x).image_score})["mecam"]

    for grid in CAM_GRIDS:
        det.cam_grid = grid
        table = results_table({"mecam": scores(id_loader)}, {s: {"mecam": scores(ld)} for s, ld in sets.items()})
        out[grid] = {m: mean_over_sets(table, "mecam", m) for m in METRICS} | {"cost": cost(det, batches, repeats)}
    det.cam_grid = configured
    return out


def run_task(task: str, data: Path, batch_size: int, repeats: int) -> dict[str, Any]:
    """Every detector and the exit ablation on one task, plus the cost figures."""
    parser, det, pre = bundle_parts(task, data)
    train, test, sets = datalists(task, parser, data)

    def loader(items: list) -> DataLoader:
        return item_loader(items, pre, batch_size)

    view = FinalExitClassifier(det.net).eval()
    payload = evaluate_posthoc(view, loader(train), loader(test), {s: loader(v) for s, v in sets.items()}, "all",
                               detector_args={"nero": {"k": NERO_K}})  # fmt: skip
    start = time.perf_counter()
    id_mecam = mecam_scores(det, loader(test))
    ood_mecam = {s: mecam_scores(det, loader(v)) for s, v in sets.items()}
    mecam_seconds = time.perf_counter() - start
    mecam_table = results_table(id_mecam, ood_mecam)
    table = {s: {"mecam": mecam_table[s]["mecam"], **payload["results"][s]} for s in sets}
    ablation = {s: {k: v for k, v in mecam_table[s].items() if k != "mecam"} for s in sets}
    batches = batch_images(loader(test))
    variants = grid_variants(det, loader(test), {s: loader(v) for s, v in sets.items()}, batches, repeats)
    return {
        "table": table,
        "ablation": ablation,
        "cost": variants[det.cam_grid]["cost"],
        "cam_grid": variants,
        "summary": {
            "bundle": BUNDLES[task],
            "exits": list(det.exits),
            "id_test_accuracy_final_exit": payload["id_test_accuracy"],
            "n_train": len(train),
            "n_id_test": len(test),
            "ood_set_sizes": {s: len(v) for s, v in sets.items()},
            "posthoc_detector_args": {"nero": {"k": NERO_K}},
            "seconds": {**payload["seconds"], "mecam_all_subsets": mecam_seconds},
        },
    }


def run_mecam_bench(data: Path, tasks: Sequence[str] = tuple(BUNDLES), repeats: int = 9) -> dict[str, Any]:
    """:func:`run_task` for each task on ``data/<task>`` (brain MRI: batches of 4, else 64), as one JSON."""
    res: dict[str, Any] = {**bench_header(), "tasks": {}, "exit_ablation": {}, "cost": {}, "task_summary": {}}
    for task in tasks:
        batch = 4 if task == "brain_mri" else 64
        out = run_task(task, data / ("brain_mri" if task == "brain_mri" else task), batch, repeats)
        res["tasks"][task], res["exit_ablation"][task] = out["table"], out["ablation"]
        res["cost"][task], res["task_summary"][task] = out["cost"], out["summary"]
        res.setdefault("cam_grid", {})[task] = out["cam_grid"]
        logger.info("%s: MECAM / forward %.2f", task, out["cost"]["mecam_over_forward"])
    return res
