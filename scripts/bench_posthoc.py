"""Benchmark the post-hoc OOD detectors: scoring overhead, streaming fit cost, and quality on the demo tasks.

Writes ``docs/benchmarks/posthoc.json`` and ``posthoc.md`` (``--out``):

* ``overhead_all_over_forward``: one backbone forward over ``--overhead-images`` images (batch 64, 2D, the NERO
  bundle's classifier at its 64x64 input) versus :func:`medood.detectors.posthoc.score_many` with every detector
  that shares the forward pass (all but those with ``needs_input_grad``, i.e. ODIN) on the same batches (median of
  ``--repeats`` runs after a warm-up). The detectors are every registered post-hoc detector
  (:func:`medood.engines.posthoc.build_detectors` with ``"all"``), loaded from the bundle's fitted
  ``models/detectors.pt``: a new detector joins the benchmark when it is registered and the bundle is refitted.
  ODIN needs its own forward-backward-forward per batch; its cost is reported separately (``odin_over_forward``).
* ``fit_seconds`` / ``fit_peak_mb``: fitting every detector that needs a fit on N = 1k, 10k, 100k synthetic
  feature vectors (D = the classifier's feature width, C classes, logits from its real head), streamed through
  ``partial_fit_features`` in batches of 1024, then ``finalize_fit``. Peak memory = the rise of the process's
  resident set (VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before the fit): it sees
  torch's native allocations, which tracemalloc does not.
* ``tasks``: the demo endoscopy task with the bundle's shipped classifier, and the pathology / dermoscopy demo
  sets with classifiers trained here (seeded, ``--epochs``), all detectors with default settings (nothing tuned
  on the OOD sets): ``{task: {ood_set: {detector: {auroc, fpr95, aupr_in, aupr_out}}}}``.

Usage::

    .venv/bin/python scripts/bench_posthoc.py [--threads 1] [--tasks endoscopy pathology dermoscopy]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch

from medood.benchmark.bundles import item_loader
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.runner import trained_classifier
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.benchmark.tables import METRICS_NOTE, md_table, ood_task_table, set_sizes
from medood.benchmark.timing import forward_ratio, head_features, measure, median_time, over_batches
from medood.data.classification import class_folder_loader, classifier_preprocessing
from medood.data.folders import ood_datalists
from medood.detectors.posthoc import score_many
from medood.detectors.registry import get_detector_class
from medood.engines.posthoc import build_detectors, evaluate_posthoc, load_detectors
from medood.networks.classifiers import build_classifier
from medood.networks.hooks import find_linear_head
from medood.utils.checkpoints import load_state as load_weights

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "nero_endoscopy_ood_classification"
CLASSES = ["normal_mucosa", "polyp", "ulcer_inflammation"]
logger = logging.getLogger("bench_posthoc")


def bundle_classifier() -> torch.nn.Module:
    """The NERO bundle's shipped classifier (resnet10, 3 classes, 64x64)."""
    return load_weights(build_classifier("resnet10", len(CLASSES)), BUNDLE / "models" / "model.pt").eval()


def overhead(net: torch.nn.Module, n_images: int, repeats: int) -> dict[str, Any]:
    """Forward alone vs score_many with every detector sharing it; ODIN separately. Fitted detectors from the
    bundle."""
    dets = load_detectors(build_detectors("all", net), BUNDLE / "models" / "detectors.pt")
    batches = list(torch.rand(n_images, 3, 64, 64, generator=torch.Generator().manual_seed(0)).split(64))
    others = {n: d for n, d in dets.items() if not d.needs_input_grad}
    own = [d for d in dets.values() if d.needs_input_grad]

    def odin(x: torch.Tensor) -> None:
        for det in own:
            det.score(x)

    ratio_all, t_fwd, t_all = forward_ratio(net, batches, functools.partial(score_many, others, net, batches), repeats)
    ratio_odin, _, t_odin = forward_ratio(net, batches, over_batches(odin, batches), max(1, repeats // 2))
    feats = head_features(net, batches[:1])[0]
    per_det = {n: median_time(functools.partial(d.score_features, feats), repeats) for n, d in others.items()}
    return {
        "overhead_all_over_forward": ratio_all,
        "odin_over_forward": ratio_odin,
        "overhead_detail": {
            "images": n_images,
            "batch_size": 64,
            "image_size": 64,
            "repeats": repeats,
            "method": "median over interleaved (forward, score_many with the detectors) pairs of the time ratio",
            "forward_seconds": t_fwd,
            "forward_plus_all_seconds": t_all,
            "odin_seconds": t_odin,
            "detectors_in_overhead": sorted(others),
            "score_features_ms_per_batch_of_64": {n: 1000 * t for n, t in sorted(per_det.items())},
        },
    }


def _stream_fit(det: Any, n: int, weight: torch.Tensor, bias: torch.Tensor, batch: int) -> None:
    n_classes, dim = weight.shape
    means = torch.rand(n_classes, dim, generator=torch.Generator().manual_seed(1)) * 2
    gen = torch.Generator().manual_seed(n)
    det.reset_fit()
    with torch.no_grad():
        for i in range(0, n, batch):
            m = min(batch, n - i)
            y = torch.randint(0, n_classes, (m,), generator=gen)
            a = torch.relu(means[y] + torch.randn(m, dim, generator=gen))
            det.partial_fit_features({"features": a, "logits": a @ weight.T + bias}, y)
        det.finalize_fit()


def _fit_one(name: str, n: int, weight: torch.Tensor, bias: torch.Tensor, threads: int, batch: int) -> tuple:
    """Fit one detector on ``n`` synthetic rows in this (fresh) process: ``(seconds, peak RSS rise in MB, ok)``.

    A throwaway fit on two batches first loads the kernels the fit uses, so their one-off code pages are not
    counted."""
    torch.set_num_threads(threads)
    cls: Any = get_detector_class(name)

    def make() -> Any:
        return cls(weight=weight, bias=bias) if "weight" in inspect.signature(cls).parameters else cls()

    _stream_fit(make(), 2 * batch, weight, bias, batch)
    det = make()
    m = measure(functools.partial(_stream_fit, det, n, weight, bias, batch))
    return m.seconds, m.peak_mb, m.exact


def fit_scaling(net: torch.nn.Module, sizes: list[int], plateau: int, batch: int = 1024) -> dict[str, Any]:
    """Streaming fit time and peak RSS rise per detector and N, each fit in a fresh process (synthetic features,
    the bundle's real head)."""
    import multiprocessing as mp

    _, linear = find_linear_head(net)
    w, b = linear.weight.detach().float().clone(), linear.bias.detach().float().clone()
    names = build_detectors("all", net)
    fit_names = [n for n, d in names.items() if d.requires_fit]
    seconds: dict[str, dict[str, float]] = {n: {} for n in fit_names}
    peak: dict[str, dict[str, float]] = {n: {} for n in fit_names}
    exact, extra = True, {}
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for name in fit_names:
            for n in sizes:
                t, mb, ok = pool.apply(_fit_one, (name, n, w, b, torch.get_num_threads(), batch))
                seconds[name][str(n)], peak[name][str(n)], exact = t, mb, exact and ok
                logger.info("fit %s on %d: %.2f s, +%.1f MB", name, n, t, mb)
            if plateau:
                t, mb, _ = pool.apply(_fit_one, (name, plateau, w, b, torch.get_num_threads(), batch))
                extra[name] = {"n": plateau, "seconds": t, "peak_mb": mb}
                logger.info("fit %s on %d: %.2f s, +%.1f MB", name, plateau, t, mb)
    method = (
        "peak rise of the resident set of a fresh process per fit (VmHWM, reset through /proc/self/clear_refs, minus "
        "VmRSS before the fit; sees torch's native allocations, unlike tracemalloc), MB"
    )
    if not exact:
        method += " (VmHWM could not be reset: upper bounds)"
    return {
        "fit_seconds": seconds,
        "fit_peak_mb": peak,
        "fit_detail": {
            "feature_dim": int(w.shape[1]),
            "classes": int(w.shape[0]),
            "batch_size": batch,
            "memory_method": method,
            "no_fit_needed": sorted(set(names) - set(fit_names)),
            "plateau_check": extra,
        },
    }


def _demo(work: Path, name: str) -> Path:
    from medood.data.demo import build_demo

    root = ROOT / "demo_data" / name
    if not root.is_dir():
        root = work / "demo" / name
        if not root.is_dir():
            build_demo(work / "demo", only=[name])
    return root


def task(work: Path, name: str, epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate every detector on one demo task; returns ``(table, summary)``."""
    data = _demo(work, name)
    if name == "endoscopy":
        net, classes, how = bundle_classifier(), CLASSES, "the NERO bundle's shipped weights"
    else:
        net, cfg = trained_classifier(data, work / "models" / name, epochs)
        classes, how = cfg["class_names"], f"trained here: resnet10, {epochs} epochs, seed 0"
    train, _ = class_folder_loader(data, "train", 64, classes, batch_size=64)
    test, _ = class_folder_loader(data, "test", 64, classes, batch_size=64)
    sets = ood_datalists([data / "ood_near", data / "ood_far"])
    oods = {s: item_loader(v, classifier_preprocessing(64), 64) for s, v in sets.items()}
    payload = evaluate_posthoc(net, train, test, oods, "all", out_dir=work / "results" / name)
    summary = {
        "classifier": how,
        "id_test_accuracy": payload["id_test_accuracy"],
        "n_train": len(cast(Sized, train.dataset)),
        "n_id_test": payload["n_id_test"],
        "ood_set_sizes": payload["ood_set_sizes"],
        "mean": payload["mean"],
        "seconds": payload["seconds"],
    }
    return payload["results"], summary


def markdown(res: dict[str, Any]) -> str:
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


#: what bounds each detector's fit memory (the constructor defaults)
_FIT_BOUNDS = {
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
        rows.append([n, *(f"{v:.2f}" for v in t), *(f"{v:.1f}" for v in mb), _FIT_BOUNDS.get(n, "")])
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, ROOT / "docs" / "benchmarks" / "posthoc.json")
    p.add_argument("--work", type=Path, default=Path("/tmp/medood_bench_posthoc"), help="demo data, models, results")
    p.add_argument("--overhead-images", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--plateau", type=int, default=300000, help="one more N showing the memory plateau (0: none)")
    p.add_argument("--tasks", nargs="*", default=["endoscopy", "pathology", "dermoscopy"])
    p.add_argument("--epochs", type=int, default=30, help="training epochs of the non-endoscopy classifiers")
    args = p.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    res: dict[str, Any] = bench_header()
    net = bundle_classifier()
    res.update(overhead(net, args.overhead_images, args.repeats))
    logger.info("overhead %.3f, ODIN %.2f", res["overhead_all_over_forward"], res["odin_over_forward"])
    res.update(fit_scaling(net, args.sizes, args.plateau))
    res["tasks"], res["task_summary"] = {}, {}
    for name in args.tasks:
        res["tasks"][name], res["task_summary"][name] = task(args.work, name, args.epochs)
    write_page(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
