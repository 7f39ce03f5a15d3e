"""The page of the heatmap decoder's benchmark (``docs/benchmarks/heatmap.md``): every sentence from its JSON.

The JSON is what :func:`medood.benchmark.heatmap_bench.run_heatmap_bench` returns.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from medood.benchmark.tables import LEGACY_NOTE, METRICS_NOTE, ood_task_section, set_sizes

__all__ = ["markdown"]


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
