"""The post-hoc detectors' benchmark (``scripts/bench_posthoc.py``): scoring overhead, streaming fit cost, demo tasks.

* :func:`overhead`: one backbone forward versus :func:`~medood.detectors.posthoc.score_many` with every fitted
  detector that shares it (ODIN separately);
* :func:`fit_scaling`: streaming fit time and peak resident-memory rise per detector and N, each fit in a fresh
  process (synthetic features through the classifier's real head);
* :func:`demo_task`: every detector on one demo task (:func:`medood.engines.posthoc.evaluate_posthoc`);
* :func:`run_posthoc_bench`: all three, as the JSON of ``docs/benchmarks/posthoc.json``
  (the page: :mod:`medood.benchmark.posthoc_page`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import multiprocessing as mp
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch

from medood.benchmark.bundles import item_loader
from medood.benchmark.report import bench_header
from medood.benchmark.runner import BUNDLES, trained_classifier
from medood.benchmark.timing import forward_ratio, head_features, measure, median_time, over_batches
from medood.data.classification import class_folder_loader, classifier_preprocessing
from medood.data.demo import build_demo
from medood.data.folders import ood_datalists
from medood.detectors.posthoc import score_many
from medood.detectors.registry import get_detector_class
from medood.engines.posthoc import build_detectors, evaluate_posthoc, load_detectors
from medood.networks.classifiers import build_classifier
from medood.networks.hooks import find_linear_head
from medood.utils.checkpoints import load_state as load_weights

__all__ = [
    "BUNDLE",
    "CLASSES",
    "demo_task",
    "fit_scaling",
    "nero_classifier",
    "overhead",
    "run_posthoc_bench",
    "stream_fit",
]

logger = logging.getLogger(__name__)

#: the bundle whose shipped classifier and fitted detectors the cost figures use
BUNDLE = BUNDLES / "nero_endoscopy_ood_classification"
CLASSES = ["normal_mucosa", "polyp", "ulcer_inflammation"]


def nero_classifier() -> torch.nn.Module:
    """The NERO bundle's shipped classifier (resnet10, 3 classes, 64x64)."""
    return load_weights(build_classifier("resnet10", len(CLASSES)), BUNDLE / "models" / "model.pt").eval()


def overhead(net: torch.nn.Module, n_images: int, repeats: int) -> dict[str, Any]:
    """Forward alone vs score_many with every detector sharing it; ODIN separately.

    The detectors are every registered post-hoc detector, fitted: the bundle's ``models/detectors.pt``.
    """
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


def stream_fit(det: Any, n: int, weight: torch.Tensor, bias: torch.Tensor, batch: int) -> None:
    """Fit ``det`` on ``n`` synthetic rows streamed in batches: class-mean features, logits from the real head."""
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
    counted.
    """
    torch.set_num_threads(threads)
    cls: Any = get_detector_class(name)

    def make() -> Any:
        return cls(weight=weight, bias=bias) if "weight" in inspect.signature(cls).parameters else cls()

    stream_fit(make(), 2 * batch, weight, bias, batch)
    det = make()
    m = measure(functools.partial(stream_fit, det, n, weight, bias, batch))
    return m.seconds, m.peak_mb, m.exact


def fit_scaling(net: torch.nn.Module, sizes: Sequence[int], plateau: int, batch: int = 1024) -> dict[str, Any]:
    """Streaming fit time and peak RSS rise per detector and N, each fit in a fresh process.

    Synthetic features, the real head of ``net``; ``plateau`` (0: none) is one more N past every memory cap.
    """
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
    """The demo set ``name``: the repository's ``demo_data/<name>``, else built under ``work/demo`` once."""
    root = BUNDLES.parent / "demo_data" / name
    if not root.is_dir():
        root = work / "demo" / name
        if not root.is_dir():
            build_demo(work / "demo", only=[name])
    return root


def demo_task(work: Path, name: str, epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate every detector on one demo task; returns ``(table, summary)``.

    Endoscopy: the NERO bundle's classifier; other tasks: a ResNet-10 trained under ``work/models`` (``epochs``).
    """
    data = _demo(work, name)
    if name == "endoscopy":
        net, classes, how = nero_classifier(), CLASSES, "the NERO bundle's shipped weights"
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


def run_posthoc_bench(
    work: Path,
    overhead_images: int = 512,
    repeats: int = 7,
    sizes: Sequence[int] = (1000, 10000, 100000),
    plateau: int = 300000,
    tasks: Sequence[str] = ("endoscopy", "pathology", "dermoscopy"),
    epochs: int = 30,
) -> dict[str, Any]:
    """The whole benchmark: :func:`overhead`, :func:`fit_scaling` and :func:`demo_task` per task, as one JSON."""
    res: dict[str, Any] = bench_header()
    net = nero_classifier()
    res.update(overhead(net, overhead_images, repeats))
    logger.info("overhead %.3f, ODIN %.2f", res["overhead_all_over_forward"], res["odin_over_forward"])
    res.update(fit_scaling(net, list(sizes), plateau))
    res["tasks"], res["task_summary"] = {}, {}
    for name in tasks:
        res["tasks"][name], res["task_summary"][name] = demo_task(work, name, epochs)
    return res
