"""Run a classifier once per batch and feed many post-hoc detectors (not a detector itself).

Every :class:`~medood.detectors.base_posthoc.ClassifierDetector` consumes the same features,
``{"features": penultimate (B, D), "logits": (B, C)}``. The helpers here run the backbone **once** per batch
and hand those features to every detector's ``partial_fit_features`` / ``score_features``, so fitting and
scoring ten baselines costs one pass over the data instead of ten.

ODIN is the exception: its input perturbation needs its own forward and backward passes, so
:func:`score_many` scores an :class:`~medood.detectors.odin.ODINDetector` separately with ``det.score(batch)``
(on the same batches).

Example::

    dets = {"energy": EnergyDetector(model=net), "vim": ViMDetector(model=net), "nero": NERODetector(model=net)}
    fit_many(dets, net, train_loader)
    scores = score_many(dets, net, test_loader)  # {"energy": (N,), "vim": (N,), "nero": (N,)}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medood.detectors.base import OODDetector
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.detectors.odin import ODINDetector
from medood.networks.hooks import FeatureExtractor, find_linear_head, flatten_features
from medood.utils.batch import unpack_batch

__all__ = ["extract_features", "fit_many", "score_many"]

logger = logging.getLogger(__name__)

Detectors = Mapping[str, OODDetector] | Sequence[OODDetector]


def _plain(x: Tensor) -> Tensor:
    as_tensor = getattr(x, "as_tensor", None)  # MONAI MetaTensor -> torch.Tensor
    return as_tensor() if callable(as_tensor) else x


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
) -> Iterable[tuple[Any, dict[str, Tensor], Tensor | None]]:
    """Yield ``(batch, {"features", "logits"}, labels)`` with one backbone pass per ``chunk_size`` rows."""
    if isinstance(head, nn.Linear):
        head_name = next((n for n, m in model.named_modules() if m is head), None)
        if head_name is None:
            raise ValueError("the given head layer is not a module of the given model")
    else:
        head_name, _ = find_linear_head(model, head)
    with FeatureExtractor(model, {FEATURES: f"{head_name}:input"}) as fx:
        for batch in loader:
            x, y = unpack_batch(batch)
            x = _plain(x)
            parts: dict[str, list[Tensor]] = {FEATURES: [], LOGITS: []}
            for xc in x.split(chunk_size):
                with torch.no_grad():
                    feats = fx(xc.to(device))
                parts[FEATURES].append(flatten_features(feats[FEATURES]).float())
                parts[LOGITS].append(feats[LOGITS].float())
            yield batch, {k: torch.cat(v) for k, v in parts.items()}, y


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
        ValueError: the loader is empty.
    """
    named = _named(detectors)
    to_fit = {n: d for n, d in named.items() if d.requires_fit}
    for det in to_fit.values():
        det.reset_fit()
    n_batches = 0
    for _, feats, y in _batches(model, loader, head, _device(model, device), chunk_size):
        for det in to_fit.values():
            det.partial_fit_features(_to(feats, det), None if y is None else y.to(det.device))
        n_batches += 1
    if n_batches == 0 and to_fit:
        raise ValueError("fit_many got an empty loader: no in-distribution data to fit on")
    for det in to_fit.values():
        det.finalize_fit()
    for det in named.values():
        det.mark_fitted()  # as OODDetector.fit, which marks detectors that need no fit as fitted too
    logger.info("fit_many: fitted %s on %d batches in one pass", sorted(to_fit), n_batches)
    return named


def score_many(
    detectors: Detectors,
    model: nn.Module,
    loader: Iterable[Any],
    head: str | nn.Linear | None = None,
    device: str | torch.device | None = None,
    chunk_size: int = 256,
) -> dict[str, Tensor]:
    """Score ``loader`` with several post-hoc detectors, one backbone pass per batch.

    ODIN detectors are scored separately with their own perturbed passes (``det.score(batch)``).

    Args:
        detectors: a mapping name -> detector, or a sequence of detectors with distinct names.
        model: the classifier whose features the detectors were built for.
        loader: batches to score.
        head: the final linear layer or its name. Defaults to the last ``nn.Linear``.
        device: where the model runs. Defaults to the device of the model's parameters.
        chunk_size: the most images per forward pass. Defaults to 256.

    Returns:
        ``{name: (N,) scores on the CPU}``, higher = more OOD.
    """
    named = _named(detectors)
    for det in named.values():
        det.check_fitted()
    scores: dict[str, list[Tensor]] = {n: [] for n in named}
    for batch, feats, _ in _batches(model, loader, head, _device(model, device), chunk_size):
        for name, det in named.items():
            if isinstance(det, ODINDetector):
                out = det.score(batch)
            else:
                with torch.no_grad():
                    out = det.score_features(_to(feats, det))
            scores[name].append(out.image_score.detach().cpu())
    return {n: torch.cat(v) if v else torch.empty(0) for n, v in scores.items()}
