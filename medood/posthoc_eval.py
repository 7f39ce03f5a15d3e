"""Evaluate post-hoc OOD detectors on a trained classifier: one fitting pass, one scoring pass per set, a table.

Shared by ``medood posthoc evaluate``, the ``nero_endoscopy_ood_classification`` bundle (through
:class:`PosthocScoreWriter`, an Ignite handler) and ``scripts/bench_posthoc.py``.

Protocol: every requested detector is fitted from **one** backbone pass over the ID training set
(:func:`~medood.detectors.posthoc.fit_many`); the ID test set and each OOD set are scored with one pass each
(ODIN separately: its input perturbation needs its own forward and backward passes). Nothing is tuned on the
OOD sets. Metrics per OOD set (ID test vs that set, OOD positive): AUROC, FPR95, AUPR-In, AUPR-Out.

FPR95 follows the OOD literature (OpenOOD, NERO): the fraction of OOD images accepted as ID at the threshold that
accepts 95 % of the ID images (:func:`medood.metrics.fpr_at_tpr` with ``positive="id"``).
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
from torch import Tensor, nn

from medood.data.errors import DataError
from medood.detectors.base import OODDetector
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.detectors.odin import ODINDetector
from medood.detectors.posthoc import extract_features, fit_many
from medood.detectors.registry import get_detector, get_detector_class, list_detectors
from medood.metrics import aupr_in, aupr_out, auroc, fpr_at_tpr
from medood.utils.io import atomic_path, atomic_write_text

__all__ = [
    "FPR95_CONVENTION",
    "METRICS",
    "SCORE_CONVENTION",
    "build_detectors",
    "evaluate_posthoc",
    "load_detectors",
    "ood_metrics",
    "parse_detectors",
    "posthoc_detector_names",
    "results_markdown",
    "results_payload",
    "results_table",
    "save_detectors",
    "score_loader",
    "write_results",
]

logger = logging.getLogger(__name__)

FPR95_CONVENTION = "fraction of OOD accepted when 95% of ID is accepted"
SCORE_CONVENTION = "higher = more OOD; OOD is the positive class (label 1) for AUROC and AUPR-Out"
METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")
_METRIC_TITLES = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
_BETTER = {"auroc": "higher", "fpr95": "lower", "aupr_in": "higher", "aupr_out": "higher"}

Table = dict[str, dict[str, dict[str, float]]]


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
    with atomic_path(path) as tmp:
        torch.save({n: d.state_dict() for n, d in detectors.items()}, tmp)
    return Path(path)


def load_detectors(detectors: Mapping[str, OODDetector], path: str | os.PathLike[str]) -> Mapping[str, OODDetector]:
    """Load fitted states saved by :func:`save_detectors` / ``DetectorFitHandler`` into ``detectors``.

    Detectors that need no fit may be absent from the file.

    Raises:
        DataError: the file is missing, or lacks a detector that needs fitting.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "fitted detectors file does not exist", "fit the detectors first (fit.yaml)")
    states = torch.load(p, map_location="cpu", weights_only=True)
    for name, det in detectors.items():
        if name in states:
            det.load_state_dict(states[name])
        elif det.requires_fit:
            raise DataError(p, f"has no fitted state for detector {name!r}", f"it holds: {sorted(states)}")
    return detectors


def ood_metrics(id_scores: Tensor, ood_scores: Tensor) -> dict[str, float]:
    """AUROC, FPR95 (OOD accepted at 95 % ID TPR), AUPR-In and AUPR-Out of ID vs OOD scores (higher = OOD)."""
    scores = torch.cat([id_scores.reshape(-1), ood_scores.reshape(-1)]).double().numpy()
    is_ood = torch.cat([torch.zeros(id_scores.numel()), torch.ones(ood_scores.numel())]).numpy()
    return {
        "auroc": auroc(scores, is_ood),
        "fpr95": fpr_at_tpr(scores, is_ood, 0.95, positive="id"),
        "aupr_in": aupr_in(scores, is_ood),
        "aupr_out": aupr_out(scores, is_ood),
    }


def results_table(id_scores: Mapping[str, Tensor], ood_scores: Mapping[str, Mapping[str, Tensor]]) -> Table:
    """``{ood_set: {detector: {"auroc", "fpr95", "aupr_in", "aupr_out"}}}`` from per-detector score tensors."""
    table: Table = {}
    for set_name, by_det in ood_scores.items():
        table[set_name] = {}
        for det, scores in by_det.items():
            finite = torch.isfinite(id_scores[det]).all() and torch.isfinite(scores).all()
            if not finite:
                logger.warning("%s on %s: non-finite scores; metrics set to NaN", det, set_name)
                table[set_name][det] = dict.fromkeys(METRICS, math.nan)
            else:
                table[set_name][det] = ood_metrics(id_scores[det], scores)
    return table


def results_payload(table: Table, **meta: Any) -> dict[str, Any]:
    """The JSON document: conventions, ``meta`` (accuracy, counts, ...), the table and per-detector means."""
    detectors = list(next(iter(table.values()))) if table else []
    mean = {d: {m: float(sum(table[s][d][m] for s in table) / len(table)) for m in METRICS} for d in detectors}
    return {
        "fpr95_convention": FPR95_CONVENTION,
        "score_convention": SCORE_CONVENTION,
        "metrics": list(METRICS),
        **meta,
        "detectors": detectors,
        "ood_sets": list(table),
        "results": table,
        "mean": mean,
    }


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def results_markdown(payload: Mapping[str, Any], title: str = "Post-hoc OOD detection") -> str:
    """The results as markdown: a header with the conventions, then one table per metric.

    Rows are detectors, columns the OOD sets plus the mean over sets; values in %.
    """
    table, sets = payload["results"], payload["ood_sets"]
    lines = [
        f"# {title}",
        "",
        f"- score: {SCORE_CONVENTION}",
        f"- FPR95 = {FPR95_CONVENTION} (OpenOOD / NERO convention); AUPR-In: ID positive; AUPR-Out: OOD positive",
        "- detectors fitted on the ID training set only; nothing is tuned on the OOD sets",
    ]
    for key in ("task", "classifier", "id_test_accuracy", "n_train", "n_id_test", "machine"):
        if key in payload:
            value = payload[key]
            value = f"{100 * value:.2f} %" if key == "id_test_accuracy" else value
            lines.append(f"- {key.replace('_', ' ')}: {value}")
    if "ood_set_sizes" in payload:
        lines.append("- OOD set sizes: " + ", ".join(f"{k} {v}" for k, v in payload["ood_set_sizes"].items()))
    for metric in METRICS:
        lines += [
            "",
            f"## {_METRIC_TITLES[metric]} (%, {_BETTER[metric]} is better)",
            "",
            "| detector | " + " | ".join(sets) + " | mean |",
            "|---" * (len(sets) + 2) + "|",
        ]
        for det in payload["detectors"]:
            cells = [_fmt(table[s][det][metric]) for s in sets] + [_fmt(payload["mean"][det][metric])]
            lines.append(f"| {det} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    payload: Mapping[str, Any], out_dir: str | os.PathLike[str], title: str | None = None
) -> tuple[Path, Path]:
    """Atomically write ``results.json`` and ``results.md`` into ``out_dir``; returns both paths."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = atomic_write_text(out / "results.json", json.dumps(payload, indent=2, allow_nan=True) + "\n")
    md = atomic_write_text(out / "results.md", results_markdown(payload, *([title] if title else [])))
    return js, md


def _eval_mode_model(detectors: Mapping[str, OODDetector], model: nn.Module) -> None:
    model.eval()
    for det in detectors.values():
        det.eval()


def score_loader(
    detectors: Mapping[str, OODDetector],
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device | None = None,
    chunk_size: int = 4096,
) -> tuple[dict[str, Tensor], Tensor, Tensor | None, dict[str, float]]:
    """Score a loader: one backbone pass for every detector but ODIN, which perturbs each batch itself.

    Returns:
        ``(scores {name: (N,)}, logits (N, C), labels (N,) or None, seconds {"features", "odin"})``.
    """
    _eval_mode_model(detectors, model)
    start = time.perf_counter()
    feats, labels = extract_features(model, loader, device=device)
    seconds = {"features": time.perf_counter() - start, "odin": 0.0}
    scores: dict[str, Tensor] = {}
    for name, det in detectors.items():
        det.check_fitted()
        if isinstance(det, ODINDetector):
            t0, parts = time.perf_counter(), []
            for batch in loader:
                parts.append(det.score(batch).image_score.detach().cpu())
            scores[name] = torch.cat(parts)
            seconds["odin"] += time.perf_counter() - t0
            continue
        t0, out = time.perf_counter(), []
        with torch.no_grad():
            for i in range(0, feats[FEATURES].shape[0], chunk_size):
                chunk = {k: v[i : i + chunk_size].to(det.device) for k, v in feats.items()}
                out.append(det.score_features(chunk).image_score.detach().float().cpu())
        scores[name] = torch.cat(out)
        seconds["features"] += time.perf_counter() - t0
    return scores, feats[LOGITS], labels, seconds


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
        The payload of :func:`results_payload`: ``payload["results"]`` is ``{ood_set: {detector: metrics}}``,
        plus ``id_test_accuracy``, set sizes and timings.

    Raises:
        ValueError: no OOD set, or an empty loader.
    """
    if not ood_loaders:
        raise ValueError("evaluate_posthoc needs at least one OOD set")
    model.eval()
    dets = dict(detectors) if isinstance(detectors, Mapping) else build_detectors(detectors, model, detector_args)
    start = time.perf_counter()
    fit_many(dets, model, train_loader, device=device)
    fit_seconds = time.perf_counter() - start
    id_scores, logits, labels, id_seconds = score_loader(dets, model, id_loader, device)
    accuracy = float((logits.argmax(1) == labels).float().mean()) if labels is not None else math.nan
    ood_scores, sizes, seconds = {}, {}, {"fit_one_pass": fit_seconds, "score_id": id_seconds}
    for set_name, loader in ood_loaders.items():
        ood_scores[set_name], _, _, seconds[f"score_{set_name}"] = score_loader(dets, model, loader, device)
        sizes[set_name] = int(next(iter(ood_scores[set_name].values())).numel())
    payload = results_payload(
        results_table(id_scores, {s: ood_scores[s] for s in ood_loaders}),
        id_test_accuracy=accuracy,
        n_id_test=int(logits.shape[0]),
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
