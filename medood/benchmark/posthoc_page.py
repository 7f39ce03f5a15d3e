"""The page of the post-hoc detectors' benchmark (``docs/benchmarks/posthoc.md``), written from its JSON.

Every figure comes from the JSON :func:`medood.benchmark.posthoc_bench.run_posthoc_bench` writes: the scoring
overhead, the streaming fit cost per detector and N, and the demo-task tables.
"""

from __future__ import annotations

from typing import Any

from medood.benchmark.tables import METRICS_NOTE, md_table, ood_task_table, set_sizes

__all__ = ["FIT_BOUNDS", "markdown"]

#: what bounds each detector's fit memory (the constructor defaults)
FIT_BOUNDS = {
    "dice": "a running mean (D values)",
    "fdbd": "a running mean (D values)",
    "knn": "a bank of at most bank_size = 50 000 feature rows (a seeded uniform sample)",
    "mahalanobis": "class sums and a D x D scatter matrix",
    "neco": "running mean and D x D covariance",
    "nero": "D x D relevance moments, class sums, a sample of at most fit_sample_size = 20 000 relevance rows",
    "nnguide": "a bank of at most bank_size = 50 000 guided feature rows (a seeded uniform sample)",
    "react": "a sample of at most max_fit_values = 2 000 000 activations",
    "rmd": "class sums and a D x D scatter matrix (the background covariance is the total scatter)",
    "she": "per-class sums of all and of the correctly classified features",
    "vim": "D x D moments and a sample of at most fit_sample_size = 20 000 feature rows",
}


def markdown(res: dict[str, Any]) -> str:
    """The page: scoring overhead, the streaming-fit table and one OOD table per demo task."""
    lines = [
        "# Post-hoc OOD detectors: cost and demo-task quality",
        "",
        f"Machine: {res['machine']}.",
        "",
        "Written by `scripts/bench_posthoc.py`; numbers in `posthoc.json`.",
        "",
        "## Scoring overhead",
        "",
        f"- score_many with every detector except ODIN / forward alone: **{res['overhead_all_over_forward']:.3f}** "
        "(target <= 1.10; median ratio over interleaved pairs of runs after a warm-up, "
        f"{res['overhead_detail']['images']} images, batch 64, 64x64, the NERO bundle's resnet10)",
        f"- ODIN (perturbation: forward + backward + forward) / forward alone: {res['odin_over_forward']:.2f}",
        "",
        *md_table(
            ["detector", "score_features ms per batch of 64"],
            ([n, f"{ms:.2f}"] for n, ms in res["overhead_detail"]["score_features_ms_per_batch_of_64"].items()),
        ),
    ]
    return "\n".join(lines + _fit_markdown(res) + _task_markdown(res)) + "\n"


def _fit_markdown(res: dict[str, Any]) -> list[str]:
    fd = res["fit_detail"]
    sizes = list(next(iter(res["fit_seconds"].values())))
    extra = fd.get("plateau_check", {})
    cols = sizes + ([str(next(iter(extra.values()))["n"])] if extra else [])
    lines = [
        "",
        f"## Streaming fit (D = {fd['feature_dim']}, C = {fd['classes']}, batches of {fd['batch_size']})",
        "",
        f"Memory: {fd['memory_method']}. No fit needed: {', '.join(fd['no_fit_needed'])}. "
        "Memory grows with N only until a detector's fixed cap is full (last column: one more N past every cap).",
        "",
    ]
    rows = []
    for n in res["fit_seconds"]:
        t = [res["fit_seconds"][n][s] for s in sizes] + ([extra[n]["seconds"]] if extra else [])
        mb = [res["fit_peak_mb"][n][s] for s in sizes] + ([extra[n]["peak_mb"]] if extra else [])
        rows.append([n, *(f"{v:.2f}" for v in t), *(f"{v:.1f}" for v in mb), FIT_BOUNDS.get(n, "")])
    header = ["detector", *(f"s @ N={n}" for n in cols), *(f"MB @ N={n}" for n in cols), "memory bounded by"]
    return lines + md_table(header, rows)


def _task_markdown(res: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Demo tasks (procedural look-alike images: not comparable with published numbers)",
        "",
        f"{METRICS_NOTE} Mean over the OOD sets of each task.",
        "",
    ]
    for name, table in res["tasks"].items():
        s = res["task_summary"][name]
        lines += [
            f"### {name}",
            "",
            f"Classifier: {s['classifier']}; ID test accuracy {100 * s['id_test_accuracy']:.1f} %; "
            f"{s['n_train']} training images; OOD sets: " + set_sizes(s["ood_set_sizes"]),
            "",
            *ood_task_table(table, list(s["mean"]), mean=lambda _t, d, m: s["mean"][d][m]),  # noqa: B023
            "",
        ]
    return lines
