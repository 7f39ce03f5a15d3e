"""Evaluate post-hoc OOD detectors on a trained classifier: one fitting pass, one scoring pass per set, a table.

Shared by ``medood posthoc evaluate``, the ``nero_endoscopy_ood_classification`` bundle (which builds and loads
its detectors here and scores through :class:`~medood.handlers.posthoc_scores.PosthocScoreWriter`) and
``scripts/bench_posthoc.py``.

Protocol: every requested detector is fitted from **one** backbone pass over the ID training set
(:func:`~medood.detectors.posthoc.fit_many`); the ID test set and each OOD set are scored with one pass each
(:func:`~medood.detectors.posthoc.score_many`; detectors that need input gradients, i.e. ODIN, add their own
passes on the same batches). Nothing is tuned on the OOD sets. Metrics per OOD set (ID test vs that set, OOD
positive): AUROC, FPR95, AUPR-In, AUPR-Out (:mod:`medood.metrics.tables`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medood.detectors.base import OODDetector
from medood.detectors.base_posthoc import ClassifierDetector
from medood.detectors.posthoc import fit_many, score_many
from medood.detectors.registry import get_detector, get_detector_class, list_detectors
from medood.metrics.tables import results_payload, results_table, write_results
from medood.utils.checkpoints import load_checkpoint, save_checkpoint
from medood.utils.errors import DataError

__all__ = [
    "build_detectors",
    "evaluate_posthoc",
    "load_detectors",
    "parse_detectors",
    "posthoc_detector_names",
    "save_detectors",
]

logger = logging.getLogger(__name__)


def posthoc_detector_names() -> list[str]:
    """Registered post-hoc detectors: image-level, no training, built on a classifier (MSP, NERO, ...)."""
    names = list_detectors(requires_training=False, produces_map=False)
    return [n for n in names if issubclass(get_detector_class(n), ClassifierDetector)]


def parse_detectors(spec: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"msp,energy"`` or a list of names -> validated names (order kept, duplicates dropped).

    Raises:
        ValueError: an unknown or non-post-hoc name (the message lists the choices).
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip().lower() for s in items if s.strip()]
    available = posthoc_detector_names()
    if not items or items == ["all"]:
        return available
    unknown = [n for n in items if n not in available]
    if unknown:
        raise ValueError(f"unknown post-hoc detector(s) {unknown}; choose from: all, {', '.join(available)}")
    return list(dict.fromkeys(items))


def build_detectors(
    names: str | Sequence[str] = "all",
    model: nn.Module | None = None,
    detector_args: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, ClassifierDetector]:
    """Instantiate post-hoc detectors on ``model`` (build them **after** loading its weights: they copy the head).

    Args:
        names: see :func:`parse_detectors`. Defaults to ``"all"``.
        model: the trained classifier.
        detector_args: per-detector constructor keywords, e.g. ``{"knn": {"k": 10}}``.
        device: where the detectors' buffers live. Defaults to the model's device.

    Returns:
        ``{name: detector}`` in the order of ``names``.

    Raises:
        ValueError: an unknown name, or ``detector_args`` for a detector that is not built.
    """
    args = dict(detector_args or {})
    chosen = parse_detectors(names)
    extra = sorted(set(args) - set(chosen))
    if extra:
        raise ValueError(f"detector_args given for detectors that are not evaluated: {extra}")
    if device is None and model is not None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else None
    dets = {n: get_detector(n, model=model, **dict(args.get(n, {}))) for n in chosen}
    return {n: d.to(device) if device is not None else d for n, d in dets.items()}  # type: ignore[misc]


def save_detectors(detectors: Mapping[str, OODDetector], path: str | os.PathLike[str]) -> Path:
    """Atomically save ``{name: state_dict}`` (loadable with ``torch.load(weights_only=True)``)."""
    return save_checkpoint({n: d.state_dict() for n, d in detectors.items()}, path)


def load_detectors(detectors: Mapping[str, OODDetector], path: str | os.PathLike[str]) -> Mapping[str, OODDetector]:
    """Load fitted states saved by :func:`save_detectors` / ``DetectorFitHandler`` into ``detectors``.

    Detectors that need no fit may be absent from the file.

    Raises:
        DataError: the file is missing or unreadable, or lacks a detector that needs fitting.
    """
    states = load_checkpoint(path, hint="fit the detectors first (fit.yaml or `medood posthoc evaluate`)")
    if not isinstance(states, Mapping):
        raise DataError(path, f"is not a file of fitted detectors (holds a {type(states).__name__})")
    for name, det in detectors.items():
        if name in states:
            det.load_state_dict(states[name])
        elif det.requires_fit:
            raise DataError(path, f"has no fitted state for detector {name!r}", f"it holds: {sorted(states)}")
    return detectors


def evaluate_posthoc(
    model: nn.Module,
    train_loader: Iterable[Any],
    id_loader: Iterable[Any],
    ood_loaders: Mapping[str, Iterable[Any]],
    detectors: str | Sequence[str] | Mapping[str, ClassifierDetector] = "all",
    detector_args: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | torch.device | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """Fit every detector in one pass over the ID training set, score ID test and every OOD set, tabulate.

    Args:
        model: the trained classifier (its weights loaded; it is put in eval mode).
        train_loader: ID training batches ``{"image", "label"}`` (labels for the class-conditional detectors).
        id_loader: ID test batches (labels give the classifier's accuracy).
        ood_loaders: ``{ood_set: loader}``.
        detectors: names (see :func:`parse_detectors`) or already built detectors. Defaults to ``"all"``.
        detector_args: per-detector constructor keywords when names are given.
        device: where the model runs. Defaults to its parameters' device.
        out_dir: if given, ``results.json``, ``results.md`` and ``detectors.pt`` (fitted states) are written.
        **meta: extra fields stored in the payload (task, classifier, ...).

    Returns:
        The payload of :func:`~medood.metrics.tables.results_payload`: ``payload["results"]`` is
        ``{ood_set: {detector: metrics}}``, plus ``id_test_accuracy``, set sizes and timings.

    Raises:
        ValueError: no OOD set, or an empty loader.
    """
    if not ood_loaders:
        raise ValueError("evaluate_posthoc needs at least one OOD set")
    model.eval()
    dets = dict(detectors) if isinstance(detectors, Mapping) else build_detectors(detectors, model, detector_args)
    for det in dets.values():
        det.eval()
    start = time.perf_counter()
    fit_many(dets, model, train_loader, device=device)
    seconds: dict[str, Any] = {"fit_one_pass": time.perf_counter() - start}
    id_test = score_many(dets, model, id_loader, device=device)
    seconds["score_id"] = id_test.seconds
    labels = id_test.labels
    accuracy = float((id_test.logits.argmax(1) == labels).float().mean()) if labels is not None else math.nan
    ood_scores, sizes = {}, {}
    for set_name, loader in ood_loaders.items():
        scored = score_many(dets, model, loader, device=device)
        ood_scores[set_name], seconds[f"score_{set_name}"] = scored.scores, scored.seconds
        sizes[set_name] = int(scored.logits.shape[0])
    payload = results_payload(
        results_table(id_test.scores, ood_scores),
        id_test_accuracy=accuracy,
        n_id_test=int(id_test.logits.shape[0]),
        ood_set_sizes=sizes,
        seconds=seconds,
        **meta,
    )
    logger.info(
        "ID test accuracy %.4f; mean AUROC %s", accuracy, {d: round(v["auroc"], 4) for d, v in payload["mean"].items()}
    )
    if out_dir is not None:
        write_results(payload, out_dir)
        save_detectors(dets, Path(out_dir) / "detectors.pt")
    return payload
