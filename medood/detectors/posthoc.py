"""Run a classifier once per batch and feed many post-hoc detectors (not a detector itself).

Every :class:`~medood.detectors.base_posthoc.ClassifierDetector` consumes the same features,
``{"features": penultimate (B, D), "logits": (B, C)}``. The helpers here run the backbone **once** per batch
and hand those features to every detector's ``partial_fit_features`` / ``score_features``, so fitting and
scoring ten baselines costs one pass over the data instead of ten. This is the one place that does it: the
``medood posthoc`` CLI, :func:`medood.engines.posthoc.evaluate_posthoc`, the ``PosthocScoreWriter`` handler
(through :func:`score_batch`) and the NERO bundle all go through it.

Detectors with ``needs_own_pass`` (ODIN: its input perturbation needs gradients with respect to the images; a
multi-layer heatmap detector: features beyond the penultimate) cannot score the shared features;
:func:`score_batch` calls their own ``score(images)`` on the same batches instead.

Example::

    dets = {"energy": EnergyDetector(model=net), "vim": ViMDetector(model=net), "odin": ODINDetector(model=net)}
    fit_many(dets, net, train_loader)
    scores = score_many(dets, net, test_loader).scores  # {"energy": (N,), "vim": (N,), "odin": (N,)}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from medood.detectors.base import OODDetector
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.networks.hooks import FeatureExtractor, find_linear_head, flatten_features
from medood.utils.batch import as_plain_tensor, unpack_batch

__all__ = [
    "PosthocScores",
    "begin_fit",
    "end_fit",
    "extract_features",
    "fit_batch",
    "fit_many",
    "score_batch",
    "score_many",
]

logger = logging.getLogger(__name__)

Detectors = Mapping[str, OODDetector] | Sequence[OODDetector]


class PosthocScores(NamedTuple):
    """What :func:`score_many` returns.

    Attributes:
        scores: ``{name: (N,) float32 scores on the CPU}``, higher = more OOD.
        logits: ``(N, C)`` classifier logits on the CPU (from the shared backbone pass).
        labels: ``(N,)`` labels when every batch had them, else ``None``.
        seconds: ``{"features": the backbone pass and every score_features call, "input_grad": the own
            passes of detectors with needs_own_pass}``.
    """

    scores: dict[str, Tensor]
    logits: Tensor
    labels: Tensor | None
    seconds: dict[str, float]


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _named(detectors: Detectors) -> dict[str, OODDetector]:
    if isinstance(detectors, Mapping):
        named = dict(detectors)
    else:
        named = {}
        for det in detectors:
            if det.name in named:
                raise ValueError(f"two detectors named {det.name!r}: pass a mapping name -> detector instead")
            named[det.name or type(det).__name__] = det
    for name, det in named.items():
        if not isinstance(det, ClassifierDetector):
            raise TypeError(f"{name}: {type(det).__name__} is not a post-hoc ClassifierDetector")
    return named


def _batches(
    model: nn.Module, loader: Iterable[Any], head: str | nn.Linear | None, device: torch.device, chunk_size: int
) -> Iterable[tuple[Tensor, dict[str, Tensor], Tensor | None]]:
    """Yield ``(images, {"features", "logits"}, labels)`` with one backbone pass per ``chunk_size`` rows."""
    if isinstance(head, nn.Linear):
        head_name = next((n for n, m in model.named_modules() if m is head), None)
        if head_name is None:
            raise ValueError("the given head layer is not a module of the given model")
    else:
        head_name, _ = find_linear_head(model, head)
    with FeatureExtractor(model, {FEATURES: f"{head_name}:input"}) as fx:
        for batch in loader:
            x, y = unpack_batch(batch)
            x = as_plain_tensor(x)
            parts: dict[str, list[Tensor]] = {FEATURES: [], LOGITS: []}
            for xc in x.split(chunk_size):
                with torch.no_grad():
                    feats = fx(xc.to(device))
                parts[FEATURES].append(flatten_features(feats[FEATURES]).float())
                parts[LOGITS].append(feats[LOGITS].float())
            yield x, {k: torch.cat(v) for k, v in parts.items()}, y


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    head: str | nn.Linear | None = None,
    device: str | torch.device | None = None,
    chunk_size: int = 256,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Penultimate features and logits of a whole dataset, on the CPU.

    Args:
        model: the trained classifier (2D or 3D); it is run as it is (put it in eval mode first).
        loader: batches (tensors, ``{"image", "label"}`` dicts or ``(image, label)`` tuples).
        head: the final linear layer or its name. Defaults to the last ``nn.Linear``.
        device: where the model runs. Defaults to the device of the model's parameters.
        chunk_size: the most images per forward pass (larger loader batches are split). Defaults to 256.

    Returns:
        ``({"features": (N, D), "logits": (N, C)}, labels (N,) or None)``; labels are ``None`` unless every
        batch has them.
    """
    dev = _device(model, device)
    out: dict[str, list[Tensor]] = {FEATURES: [], LOGITS: []}
    labels: list[Tensor] | None = []
    for _, feats, y in _batches(model, loader, head, dev, chunk_size):
        for key in out:
            out[key].append(feats[key].cpu())
        labels = None if y is None or labels is None else [*labels, y.reshape(-1).cpu()]
    if not out[FEATURES]:
        raise ValueError("extract_features got an empty loader")
    return {k: torch.cat(v) for k, v in out.items()}, (torch.cat(labels) if labels else None)


def _to(feats: Mapping[str, Tensor], det: OODDetector) -> dict[str, Tensor]:
    dev = det.device
    return {k: v.to(dev) for k, v in feats.items()}


def fit_many(
    detectors: Detectors,
    model: nn.Module,
    loader: Iterable[Any],
    head: str | nn.Linear | None = None,
    device: str | torch.device | None = None,
    chunk_size: int = 256,
) -> dict[str, OODDetector]:
    """Fit several post-hoc detectors in one pass over ``loader`` (each streams its own statistics).

    Detectors that need no fit are passed over. The result equals fitting each detector alone with
    ``det.fit(loader)``.

    Args:
        detectors: a mapping name -> detector, or a sequence of detectors with distinct names.
        model: the classifier whose features the detectors were built for.
        loader: in-distribution training batches (with labels for class-conditional detectors).
        head: the final linear layer or its name. Defaults to the last ``nn.Linear``.
        device: where the model runs. Defaults to the device of the model's parameters.
        chunk_size: the most images per forward pass. Defaults to 256.

    Returns:
        The detectors by name, fitted.

    Raises:
        ValueError: the loader is empty, or a detector trains networks (e.g. the heatmap decoder: use its ``fit``).
    """
    named = _named(detectors)
    trained = sorted(n for n, d in named.items() if d.training_stages())
    if trained:
        raise ValueError(f"fit_many fits statistics only; {trained} train networks: call their fit() instead")
    begin_fit(named)
    n_batches = 0
    for _, feats, y in _batches(model, loader, head, _device(model, device), chunk_size):
        fit_batch(named, feats, y)
        n_batches += 1
    if n_batches == 0 and any(d.requires_fit for d in named.values()):
        raise ValueError("fit_many got an empty loader: no in-distribution data to fit on")
    end_fit(named)
    logger.info("fit_many: fitted %s on %d batches in one pass", sorted(named), n_batches)
    return named


def begin_fit(detectors: Mapping[str, OODDetector]) -> None:
    """Clear the running statistics of every detector that needs fitting (before the first :func:`fit_batch`)."""
    for det in detectors.values():
        if det.requires_fit:
            det.reset_fit()


def fit_batch(detectors: Mapping[str, OODDetector], features: Mapping[str, Tensor], labels: Tensor | None) -> None:
    """Add one batch of features (and class labels) to the statistics of every detector that needs fitting."""
    with torch.no_grad():
        for det in detectors.values():
            if det.requires_fit:
                det.partial_fit_features(_to(features, det), None if labels is None else labels.to(det.device))


def end_fit(detectors: Mapping[str, OODDetector]) -> None:
    """Turn the statistics into buffers and mark every detector fitted (those that need no fit too, as ``fit``)."""
    for det in detectors.values():
        if det.requires_fit:
            det.finalize_fit()
        det.mark_fitted()


def score_batch(
    detectors: Mapping[str, OODDetector], features: Mapping[str, Tensor], images: Tensor | None = None
) -> dict[str, Tensor]:
    """Score one batch with several detectors, sharing its features.

    Each detector runs ``score_features(features)``, except detectors with ``needs_own_pass``, which run
    ``score(images)`` (their own passes through their host model).

    Args:
        detectors: fitted detectors by name.
        features: the batch's shared features, ``{"features": (B, D), "logits": (B, C)}``.
        images: the batch's images; needed only when a detector has ``needs_own_pass``.

    Returns:
        ``{name: (B,) float32 scores on the CPU}``, higher = more OOD.

    Raises:
        ValueError: a detector needs the images and none were given.
    """
    scores = {}
    for name, det in detectors.items():
        if det.needs_own_pass:
            if images is None:
                raise ValueError(f"{name} needs its own pass (input gradients or more features): pass the images")
            out = det.score(images)
        else:
            with torch.no_grad():
                out = det.score_features(_to(features, det))
        scores[name] = out.image_score.detach().float().cpu()
    return scores


def score_many(
    detectors: Detectors,
    model: nn.Module,
    loader: Iterable[Any],
    head: str | nn.Linear | None = None,
    device: str | torch.device | None = None,
    chunk_size: int = 256,
) -> PosthocScores:
    """Score ``loader`` with several post-hoc detectors, one backbone pass per batch (see :func:`score_batch`).

    Args:
        detectors: a mapping name -> detector, or a sequence of detectors with distinct names.
        model: the classifier whose features the detectors were built for (put it in eval mode first).
        loader: batches to score.
        head: the final linear layer or its name. Defaults to the last ``nn.Linear``.
        device: where the model runs. Defaults to the device of the model's parameters.
        chunk_size: the most images per forward pass. Defaults to 256.

    Returns:
        The scores by detector name, with the logits, labels and timings of the pass.

    Raises:
        NotFittedError: a detector needs fitting and has not been fitted.
        ValueError: the loader is empty.
    """
    named = _named(detectors)
    for det in named.values():
        det.check_fitted()
    shared = {n: d for n, d in named.items() if not d.needs_own_pass}
    own = {n: d for n, d in named.items() if d.needs_own_pass}
    scores: dict[str, list[Tensor]] = {n: [] for n in named}
    logits: list[Tensor] = []
    labels: list[Tensor] | None = []
    start, own_seconds = time.perf_counter(), 0.0
    for x, feats, y in _batches(model, loader, head, _device(model, device), chunk_size):
        parts = score_batch(shared, feats)
        t0 = time.perf_counter()
        parts.update(score_batch(own, feats, x))
        own_seconds += time.perf_counter() - t0
        for name in named:
            scores[name].append(parts[name])
        logits.append(feats[LOGITS].cpu())
        labels = None if y is None or labels is None else [*labels, y.reshape(-1).cpu()]
    if not logits:
        raise ValueError("score_many got an empty loader")
    seconds = {"features": time.perf_counter() - start - own_seconds, "input_grad": own_seconds}
    return PosthocScores(
        {n: torch.cat(v) for n, v in scores.items()},
        torch.cat(logits),
        torch.cat(labels) if labels else None,
        seconds,
    )
