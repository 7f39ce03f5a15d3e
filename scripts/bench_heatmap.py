"""Benchmark the heatmap decoder against every post-hoc detector on the same classifier, and its cost.

For each task the bundle's shipped weights are used: the frozen classifier and the trained decoder
(``bundles/heatmap_<task>_ood_classification/models``; the endoscopy classifier is the NERO bundle's;
``brain_mri_mecam_classifier`` is the brain bundle with the MECAM bundle's classifier, ``mecam_classifier.yaml``). Every
post-hoc detector of ``medood list`` (default settings, nothing tuned on OOD data) is fitted on the ID training
set in one backbone pass (:func:`~medood.detectors.posthoc.fit_many`); the ID test set and every OOD set are then
scored by all detectors **and** the heatmap decoder with one backbone pass per batch
(:func:`~medood.detectors.posthoc.score_many`; ODIN adds its own perturbed passes). Per OOD set (ID test vs that
set, OOD positive): AUROC, FPR95 (fraction of OOD accepted when 95 % of ID is accepted), AUPR-In, AUPR-Out.

Also recorded per task: ``mean |h|`` of the maps per set (the image score is that mean) and its ratio to the ID
test set's, and the cost: the decoder alone and the full ``det.score`` (classifier + decoder) over the classifier
forward alone (median of interleaved pairs on the same batches).

Writes ``docs/benchmarks/heatmap.json`` (``{"machine", "tasks": {task: {ood_set: {detector: {"auroc", "fpr95",
"aupr_in", "aupr_out"}}}}, ...}``) and ``heatmap.md``; every sentence of the page is generated from the JSON.

Legacy: the one protocol for comparing methods is ``scripts/benchmark.py`` (``docs/results.md``).

Usage::

    .venv/bin/python scripts/bench_heatmap.py [--threads 2] [--tasks pathology endoscopy brain_mri] \
        [--data demo_data]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Mapping
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
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.runner import resolved_k
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.benchmark.tables import LEGACY_NOTE, METRICS_NOTE, ood_task_section, set_sizes
from medood.benchmark.timing import batch_record, forward_ratio, over_batches
from medood.detectors.posthoc import fit_many, score_many
from medood.engines.posthoc import build_detectors
from medood.metrics.tables import results_table

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_heatmap")


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
    bundle = ROOT / "bundles" / f"heatmap_{name}_ood_classification"
    configs = ["inference.yaml", *([extra] if extra else []), "evaluate.yaml"]
    parser = bundle_parser(bundle, configs, dataset_dir=str(data), device="$torch.device('cpu')")
    det = load_network(parser)
    return parser, parser.get_parsed_content("classifier"), det


def loaders(parser: ConfigParser, data: Path, volumes: bool) -> tuple[DataLoader, DataLoader, dict[str, DataLoader]]:
    """ID train, ID test and OOD-set loaders with the bundle's preprocessing: a class-folder demo set (2D), or
    (``volumes``) the brain bundle's evaluate.yaml protocol (3D contrast volumes)."""
    pre = parser.get_parsed_content("preprocessing")
    if volumes:
        from medood.data.contrasts import contrast_datalist

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
    res["summary"]["classifier"] = str(Path(parser.get_parsed_content("classifier_path")).resolve().relative_to(ROOT))
    res["summary"]["n_train"] = len(train.dataset)  # type: ignore[arg-type]
    res["summary"]["cost"] = cost(net, det, batch_images(test, 64)[:1] * 4, repeats)  # the ID test batch, 4 times
    return res


def _notes(res: Mapping[str, Any]) -> list[str]:
    """Reading notes generated from the results (set sizes, FPR95 resolution, NERO's effective k)."""
    sizes = [n for s in res["task_summary"].values() for n in s["ood_set_sizes"].values()]
    lines = [
        "",
        "## Notes (generated from heatmap.json)",
        "",
        f"- OOD set sizes {min(sizes)}-{max(sizes)} images: with n images one image moves AUROC by up to 100 / n "
        "points and FPR95 is a multiple of 100 / n %. One trained decoder per bundle (the paper reports the mean "
        "of 5).",
    ]
    ks = {t: s["nero_k_effective"] for t, s in res["task_summary"].items() if s.get("nero_k_effective")}
    if ks:
        lines.append(
            "- NERO's effective k (least-relevant neurons of its feature-norm term; the term is 1 for every input "
            "when k = D): " + ", ".join(f"{t} {v['k_effective']} of D = {v['d']}" for t, v in ks.items()) + "."
        )
    lines += [
        f"- {LEGACY_NOTE} Why the decoder trails where it does: the heatmap bundles' `docs/README.md`.",
    ]
    return lines


def _fmean(table: Mapping[str, Any], det: str, metric: str) -> float:
    return statistics.fmean(table[k][det][metric] for k in table)


def markdown(res: Mapping[str, Any]) -> str:
    """The tables: per task, AUROC / FPR95 per OOD set and the means, then the heatmap's |h| ratios and cost."""
    lines = [
        "# Heatmap-based OOD detection (Hornauer & Belagiannis, WACV 2023) next to every post-hoc detector",
        "",
        f"Machine: {res['machine']}.",
        "",
        "Written by `scripts/bench_heatmap.py`; numbers in `heatmap.json`. The bundles' shipped weights; every "
        "detector on the **same frozen classifier**, post-hoc detectors fitted on the ID training set in one "
        "backbone pass, all (with the heatmap decoder) scored in one backbone pass per batch. Nothing is tuned on "
        f"OOD data. {METRICS_NOTE} Demo data: not comparable with "
        "published numbers (small sets: see the set sizes).",
    ]
    for name, table in res["tasks"].items():
        s = res["task_summary"][name]
        intro = (f"Classifier: `{s['classifier']}`, ID test accuracy {100 * s['id_test_accuracy']:.1f} %; "
                 f"{s.get('n_train', '?')} training images; {s['n_id_test']} ID test; OOD sets: "
                 + set_sizes(s["ood_set_sizes"]))  # fmt: skip
        lines += ood_task_section(name, intro, table, "heatmap", "Heatmap decoder", mean=_fmean)
        c = s["cost"]
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in s["mean_abs_h_ratio_to_id"].items())
        lines += [
            "",
            f"Mean |h| on the ID test set: {s['mean_abs_h']['id_test']:.4f}; ratio of each OOD set's mean |h| to it: "
            f"{ratios}.",
            "",
            f"Cost ({c['images']} images of shape {c['input_shape']}, batch {c['batch_size']}): classifier forward "
            f"{c['forward_ms_per_image']:.2f} ms / image; decoder alone {c['decoder_ms_per_image']:.2f} ms / image "
            f"= **{c['decoder_over_forward']:.2f}x** the forward; classifier + decoder (`det.score`) "
            f"{c['score_over_forward']:.2f}x the forward alone ({c['decoder_parameters']} decoder parameters).",
        ]
    return "\n".join(lines + _notes(res)) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, ROOT / "docs" / "benchmarks" / "heatmap.json")
    p.add_argument("--data", type=Path, default=ROOT / "demo_data", help="the demo data root")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    args = p.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    res: dict[str, Any] = {**bench_header(), "tasks": {}, "task_summary": {}}
    for name in args.tasks:
        out = run_task(name, args.data, args.repeats)
        res["tasks"][name], res["task_summary"][name] = out["table"], out["summary"]
        logger.info("%s done", name)
    write_page(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
