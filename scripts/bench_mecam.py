"""Benchmark MECAM against every post-hoc detector on the same multi-exit classifier, with the exit ablation and
the scoring cost.

For each task (the MECAM bundles' demo tasks: dermoscopy, pathology, brain-MRI contrast) the bundle's shipped
detector (``models/model.pt``) and the bundle's own preprocessing and datalists are used (parsed from its configs):

* ``tasks``: ``{task: {ood_set: {detector: {auroc, fpr95, aupr_in, aupr_out}}}}`` for ``mecam`` (the bundle's
  exits) and every post-hoc detector of ``medood list`` scored on the classifier's **final exit**
  (:class:`~medood.networks.nets.FinalExitClassifier`, whose ``nn.Linear`` head is the final exit), fitted on the
  ID training set in one backbone pass and scoring in one pass per set
  (:func:`medood.engines.posthoc.evaluate_posthoc`; ODIN adds its own perturbed passes). Default settings, except
  NERO's ``k`` = 175/512 of the feature width (the NERO code's ResNet-18 ratio; the default 175 exceeds these
  networks' widths). Nothing is tuned on the OOD sets.
* ``exit_ablation``: the same metrics for MECAM with each of the 15 non-empty exit subsets
  (:meth:`~medood.detectors.mecam.MECAMDetector.score_subsets`).
* ``cost``: MECAM's scoring time over the plain forward pass of the classifier on the same batches, median of
  interleaved repeated pairs after a warm-up (the target is <= 2.2: MECAM needs a second, masked pass), with
  the bundle's ``cam_grid``; ``cam_grid`` has the mean metrics and the cost of both settings for every task.

Every sentence of ``mecam.md`` is generated from ``mecam.json``. Legacy: the one protocol for comparing methods is
``scripts/benchmark.py`` (``docs/results.md``).

Usage::

    .venv/bin/python scripts/bench_mecam.py [--threads 1] [--tasks dermoscopy pathology brain_mri] \
        [--data /path/to/demo_data]
"""

from __future__ import annotations

import argparse
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
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.benchmark.tables import LEGACY_NOTE, METRICS_NOTE, md_table, ood_task_section, set_sizes
from medood.benchmark.tables import mean_over_sets as _mean
from medood.benchmark.timing import batch_record, forward_ratio, over_batches
from medood.data.contrasts import contrast_datalist, contrast_evaluation_datalist
from medood.detectors.mecam import CAM_GRIDS, MECAMDetector, all_exit_subsets
from medood.engines.posthoc import evaluate_posthoc
from medood.metrics.tables import METRICS, results_table
from medood.networks.nets import FinalExitClassifier

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {
    "dermoscopy": "mecam_dermoscopy_ood_classification",
    "pathology": "mecam_pathology_ood_classification",
    "brain_mri": "mecam_brain_mri_ood_classification",
}
logger = logging.getLogger("bench_mecam")


def bundle_parts(task: str, data: Path) -> tuple[ConfigParser, MECAMDetector, Any]:
    """The bundle's parsed configs (inference + evaluate), its shipped detector (eval mode) and preprocessing."""
    bundle = ROOT / "bundles" / BUNDLES[task]
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
    """MECAM scoring (the detector's ``cam_grid``) vs the classifier's plain forward pass (all exit logits) on the
    same batches."""
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
        out[grid] = {m: _mean(table, "mecam", m) for m in METRICS} | {"cost": cost(det, batches, repeats)}
    det.cam_grid = configured
    return out


def run_task(task: str, data: Path, batch_size: int, repeats: int) -> dict[str, Any]:
    """Every detector and the exit ablation on one task, plus the cost figures."""
    parser, det, pre = bundle_parts(task, data)
    train, test, sets = datalists(task, parser, data)

    def loader(items: list) -> DataLoader:
        return item_loader(items, pre, batch_size)

    view = FinalExitClassifier(det.net).eval()
    nero_k = 175 / 512
    payload = evaluate_posthoc(view, loader(train), loader(test), {s: loader(v) for s, v in sets.items()}, "all",
                               detector_args={"nero": {"k": nero_k}})  # fmt: skip
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
            "posthoc_detector_args": {"nero": {"k": nero_k}},
            "seconds": {**payload["seconds"], "mecam_all_subsets": mecam_seconds},
        },
    }


def markdown(res: dict[str, Any]) -> str:
    """The page; every sentence is generated from ``res`` (the JSON this script writes)."""
    lines = [
        "# MECAM vs the post-hoc detectors on the same multi-exit classifier",
        "",
        f"Machine: {res['machine']}. Written by `scripts/bench_mecam.py`; numbers in `mecam.json`.",
        "",
        f"{METRICS_NOTE} Post-hoc detectors are scored on the final exit",
        "of the bundle's shipped multi-exit classifier (one backbone pass; ODIN adds its perturbed passes), fitted on",
        "the ID training set with default settings (NERO: k = 175/512 of the feature width). Demo data: procedural",
        "dermoscopy look-alikes, real IHC tissue patches, synthetic brain MRI; a few images per OOD set, so one",
        "image moves AUROC by several points: not comparable with published numbers.",
    ]
    for task, table in res["tasks"].items():
        s = res["task_summary"][task]
        intro = (f"Bundle `{s['bundle']}`; final-exit ID test accuracy {100 * s['id_test_accuracy_final_exit']:.1f} "
                 f"%; {s['n_train']} training and {s['n_id_test']} ID test images; OOD sets: "
                 + set_sizes(s["ood_set_sizes"]) + ". Sorted by mean AUROC.")  # fmt: skip
        lines += ood_task_section(task, intro, table, "mecam", "MECAM")
    lines += _ablation_markdown(res) + _cost_markdown(res)
    lines += ["", LEGACY_NOTE]
    return "\n".join(lines) + "\n"


def _ablation_markdown(res: dict[str, Any]) -> list[str]:
    tasks = list(res["exit_ablation"])
    lines = [
        "",
        "## Exit-subset ablation (MECAM with each non-empty subset of the 4 exits; 0 = shallowest)",
        "",
        "Mean over the OOD sets of each task, AUROC / FPR95 in %.",
        "",
    ]
    rows = []
    for subset in all_exit_subsets():
        name = "exits_" + "".join(map(str, subset))
        cells = [
            f"{100 * _mean(res['exit_ablation'][t], name, 'auroc'):.1f} / "
            f"{100 * _mean(res['exit_ablation'][t], name, 'fpr95'):.1f}"
            for t in tasks
        ]
        rows.append([", ".join(map(str, subset)), *cells])
    lines += md_table(["exits", *tasks], rows)
    for t in tasks:
        means = {k: _mean(res["exit_ablation"][t], k, "auroc") for k in next(iter(res["exit_ablation"][t].values()))}
        lo, hi = min(means, key=means.__getitem__), max(means, key=means.__getitem__)
        lines.append(
            f"\n{t}: mean AUROC over the subsets {100 * means[lo]:.1f} ({lo}) to {100 * means[hi]:.1f} ({hi})"
            f"{'; the configured exits ' + str(res['task_summary'][t]['exits']) if t in res['task_summary'] else ''}."
        )
    return lines


def _cost_markdown(res: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Scoring cost",
        "",
        "MECAM scoring (plain pass + fused CAM + masked pass) over the classifier's plain forward pass on the same",
        "batches (the ID test set): median ratio of interleaved pairs after a warm-up. Target <= 2.2.",
        "",
    ]
    rows = [[f"{task} ({c['cam_grid']})", "x".join(map(str, c["input_shape"])), c["batch_size"], c["images"],
             c["repeats"], f"{c['forward_seconds']:.3f}", f"{c['mecam_seconds']:.3f}",
             f"**{c['mecam_over_forward']:.2f}**", f"{c['ms_per_image_mecam']:.2f}"]
            for task, c in res["cost"].items()]  # fmt: skip
    lines += md_table(["task (cam_grid)", "input", "batch", "images", "repeats", "forward s", "MECAM s", "ratio",
                       "MECAM ms / image"], rows)  # fmt: skip
    lines += [
        "",
        "`cam_grid`: `input` = every exit's CAM up-sampled to the input, then softmaxed and fused (the paper); `cam` =",
        "softmax and fusion on the finest fused exit's CAM grid, then one up-sampling of the fused map (the 3D",
        "bundle's setting). Both on every task (mean over the OOD sets, %; cost as above):",
        "",
    ]
    rows = [[task, grid, f"{100 * v['auroc']:.1f}", f"{100 * v['fpr95']:.1f}", f"{v['cost']['mecam_over_forward']:.2f}"]
            for task, by_grid in res.get("cam_grid", {}).items() for grid, v in by_grid.items()]  # fmt: skip
    lines += md_table(["task", "cam_grid", "mean AUROC", "mean FPR95", "MECAM / forward"], rows)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, ROOT / "docs" / "benchmarks" / "mecam.json")
    p.add_argument("--data", type=Path, default=ROOT / "demo_data", help="the demo data root (medood data demo)")
    p.add_argument("--tasks", nargs="*", default=list(BUNDLES))
    p.add_argument("--repeats", type=int, default=9, help="interleaved timing pairs")
    args = p.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    res: dict[str, Any] = {**bench_header(), "tasks": {}, "exit_ablation": {}, "cost": {}, "task_summary": {}}
    for task in args.tasks:
        batch = 4 if task == "brain_mri" else 64
        out = run_task(task, args.data / ("brain_mri" if task == "brain_mri" else task), batch, args.repeats)
        res["tasks"][task], res["exit_ablation"][task] = out["table"], out["ablation"]
        res["cost"][task], res["task_summary"][task] = out["cost"], out["summary"]
        res.setdefault("cam_grid", {})[task] = out["cam_grid"]
        logger.info("%s: MECAM / forward %.2f", task, out["cost"]["mecam_over_forward"])
    write_page(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
