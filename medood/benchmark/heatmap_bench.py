"""The heatmap decoder against every post-hoc detector on the same frozen classifier (``scripts/bench_heatmap.py``).

Per task, a heatmap bundle's shipped classifier and decoder (:func:`bundle_parts`) and its preprocessing
(:func:`loaders`): every post-hoc detector fitted in one backbone pass, all scored with the decoder in one pass per
batch (:func:`evaluate`), and the decoder's cost over the classifier forward (:func:`cost`). :func:`run_heatmap_bench`
gathers the tasks into the JSON of ``docs/benchmarks/heatmap.json`` (the page: :mod:`medood.benchmark.heatmap_page`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader

from medood.benchmark.bundles import (
    batch_images,
    bundle_parser,
    class_folder_sets,
    item_loader,
    load_network,
    split_evaluation_items,
)
from medood.benchmark.report import bench_header
from medood.benchmark.runner import BUNDLES, resolved_k
from medood.benchmark.timing import batch_record, forward_ratio, over_batches
from medood.data.contrasts import contrast_datalist
from medood.detectors.posthoc import fit_many, score_many
from medood.engines.posthoc import build_detectors
from medood.metrics.tables import results_table

__all__ = ["TASKS", "bundle_parts", "cost", "evaluate", "loaders", "run_heatmap_bench", "run_task"]

logger = logging.getLogger(__name__)

#: task -> (bundle, demo data set, extra config merged after inference.yaml)
TASKS = {
    "pathology": ("pathology", "pathology", None),
    "endoscopy": ("endoscopy", "endoscopy", None),
    "brain_mri": ("brain_mri", "brain_mri", None),
    "brain_mri_mecam_classifier": ("brain_mri", "brain_mri", "mecam_classifier.yaml"),
}


def bundle_parts(task: str, data: Path) -> tuple[ConfigParser, torch.nn.Module, Any]:
    """The bundle's parsed inference (+ evaluate) config, its frozen classifier and its trained heatmap detector."""
    name, _, extra = TASKS[task]
    bundle = BUNDLES / f"heatmap_{name}_ood_classification"
    configs = ["inference.yaml", *([extra] if extra else []), "evaluate.yaml"]
    parser = bundle_parser(bundle, configs, dataset_dir=str(data), device="$torch.device('cpu')")
    det = load_network(parser)
    return parser, parser.get_parsed_content("classifier"), det


def loaders(parser: ConfigParser, data: Path, volumes: bool) -> tuple[DataLoader, DataLoader, dict[str, DataLoader]]:
    """ID train, ID test and OOD-set loaders with the bundle's preprocessing.

    A class-folder demo set (2D), or (``volumes``) the brain bundle's evaluate.yaml protocol (3D contrast volumes).
    """
    pre = parser.get_parsed_content("preprocessing")
    if volumes:
        contrasts = parser.get_parsed_content("contrasts")
        train = contrast_datalist(parser.get_parsed_content("dataset_dir"), "training", contrasts)
        test, sets = split_evaluation_items(parser.get_parsed_content("datalist"))  # ID test, then the OOD sets
    else:
        train, test, sets = class_folder_sets(data, parser.get_parsed_content("class_names"))
    batch = 8 if volumes else 64

    def loader(items: list[dict[str, Any]]) -> DataLoader:
        return item_loader(items, pre, batch, keys=("image", "label"))

    return loader(train), loader(test), {k: loader(v) for k, v in sets.items()}


def cost(net: torch.nn.Module, det: Any, batches: list[torch.Tensor], repeats: int) -> dict[str, Any]:
    """Decoder alone and classifier + decoder (``det.score``) over the classifier forward alone."""
    with torch.no_grad():
        feats = [det.extract_features(x) for x in batches]  # the detector's own features (all its layers)
    r_dec, t_fwd, t_dec = forward_ratio(net, batches, over_batches(det.score_features, feats, no_grad=True), repeats)
    r_full, _, t_full = forward_ratio(net, batches, over_batches(det.score, batches), repeats)
    shape = batch_record(batches, repeats)
    n = shape["images"]
    return {
        "decoder_over_forward": r_dec,
        "score_over_forward": r_full,
        **shape,
        "forward_ms_per_image": 1000 * t_fwd / n,
        "decoder_ms_per_image": 1000 * t_dec / n,
        "score_ms_per_image": 1000 * t_full / n,
        "decoder_parameters": sum(p.numel() for dec in det.decoders for p in dec.parameters()),
        "method": "median over interleaved (classifier forward, other) pairs of the time ratio, same batches",
    }


def evaluate(
    net: torch.nn.Module, det: Any, train: Any, test: Any, oods: Mapping[str, Any], detector_args: Mapping[str, Any]
) -> dict[str, Any]:
    """Fit every post-hoc detector in one pass; score ID test and every OOD set with them and the heatmap."""
    baselines = build_detectors("all", net, detector_args)
    start = time.perf_counter()
    fit_many(baselines, net, train)
    fit_seconds = time.perf_counter() - start
    dets = {**baselines, "heatmap": det}
    id_scores = score_many(dets, net, test)
    ood = {name: score_many(dets, net, loader) for name, loader in oods.items()}
    table = results_table(id_scores.scores, {k: v.scores for k, v in ood.items()})
    id_h = float(id_scores.scores["heatmap"].mean())
    mean_h = {"id_test": id_h, **{k: float(v.scores["heatmap"].mean()) for k, v in ood.items()}}
    labels = id_scores.labels
    acc = float((id_scores.logits.argmax(1) == labels).float().mean()) if labels is not None else float("nan")
    nero_k = resolved_k(baselines["nero"]) if "nero" in baselines else None
    return {
        "table": table,
        "summary": {
            "id_test_accuracy": acc,
            "n_id_test": int(id_scores.logits.shape[0]),
            "ood_set_sizes": {k: int(v.logits.shape[0]) for k, v in ood.items()},
            "mean_abs_h": mean_h,
            "mean_abs_h_ratio_to_id": {k: v / id_h for k, v in mean_h.items() if k != "id_test"},
            "posthoc_fit_seconds_one_pass": fit_seconds,
            "detector_args": dict(detector_args),
            **({"nero_k_effective": nero_k} if nero_k else {}),
        },
    }


def run_task(name: str, data_root: Path, repeats: int) -> dict[str, Any]:
    """One demo task (pathology / endoscopy: 2D class folders; brain_mri*: 3D contrast volumes) with its bundle."""
    data = data_root / TASKS[name][1]
    parser, net, det = bundle_parts(name, data)
    train, test, oods = loaders(parser, data, TASKS[name][1] == "brain_mri")
    res = evaluate(net, det, train, test, oods, {})
    classifier = Path(parser.get_parsed_content("classifier_path")).resolve().relative_to(BUNDLES.parent)
    res["summary"]["classifier"] = str(classifier)
    res["summary"]["n_train"] = len(train.dataset)  # type: ignore[arg-type]
    res["summary"]["cost"] = cost(net, det, batch_images(test, 64)[:1] * 4, repeats)  # the ID test batch, 4 times
    return res


def run_heatmap_bench(data: Path, tasks: Sequence[str] = tuple(TASKS), repeats: int = 7) -> dict[str, Any]:
    """:func:`run_task` for each task on the demo data root ``data``, as one JSON."""
    res: dict[str, Any] = {**bench_header(), "tasks": {}, "task_summary": {}}
    for name in tasks:
        out = run_task(name, data, repeats)
        res["tasks"][name], res["task_summary"][name] = out["table"], out["summary"]
        logger.info("%s done", name)
    return res
