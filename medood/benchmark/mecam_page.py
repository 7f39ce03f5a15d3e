"""The page of MECAM's benchmark (``docs/benchmarks/mecam.md``): every sentence generated from ``mecam.json``.

The JSON is what :func:`medood.benchmark.mecam_bench.run_mecam_bench` returns: per task the OOD table (MECAM and
every post-hoc detector on the final exit), the exit-subset ablation and the scoring cost of each ``cam_grid``.
"""

from __future__ import annotations

from typing import Any

from medood.benchmark.tables import LEGACY_NOTE, METRICS_NOTE, md_table, ood_task_section, set_sizes
from medood.benchmark.tables import mean_over_sets as _mean
from medood.detectors.mecam import all_exit_subsets

__all__ = ["markdown"]


def markdown(res: dict[str, Any]) -> str:
    """The page; every sentence is generated from ``res`` (the JSON ``scripts/bench_mecam.py`` writes)."""
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
