"""Recorded layer features of a bundle's host network, one forward per item (the spectral scripts' shared loop).

``scripts/bench_spectral.py`` scores every feature detector from one forward per case
(:func:`recorded_forward`); ``scripts/diagnose_spectral.py`` keeps a per-layer summary (the singular values) of
every case (:func:`layer_summaries`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medood.networks.feature_maps import FeatureRecorder

__all__ = ["layer_summaries", "recorded_forward"]


def recorded_forward(
    net: nn.Module, recorder: FeatureRecorder, transform: Callable[[dict[str, Any]], Mapping[str, Any]], item: dict
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One item through ``transform`` and ``net`` (no grad, batch of 1) with ``recorder`` attached.

    What the recorder held before (e.g. from MC-dropout passes) is dropped first.

    Returns:
        ``(input batch (1, ...), {recorded key: output of its first call})``.
    """
    x = torch.as_tensor(transform(dict(item))["image"])[None].float()
    recorder.pop_calls()
    with torch.no_grad():
        net(x)
    return x, {k: v[0] for k, v in recorder.pop_calls().items()}


def layer_summaries(
    net: nn.Module,
    layers: Sequence[str],
    items: Iterable[dict],
    transform: Callable[[dict[str, Any]], Mapping[str, Any]],
    summary: Callable[[torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """Per layer of ``layers``, ``summary`` of its output for every item, concatenated along the first axis.

    Example: ``layer_summaries(net, stages, items, transform, singular_values)`` gives the ``(n, C)`` singular
    values of each stage (:func:`medood.detectors.spectral.singular_values`).
    """
    recorder = FeatureRecorder(net, {name: name for name in layers})
    out: list[list[torch.Tensor]] = [[] for _ in layers]
    try:
        for item in items:
            feats = recorded_forward(net, recorder, transform, item)[1]
            for i, name in enumerate(layers):
                out[i].append(summary(feats[name]))
    finally:
        recorder.remove()
    return [torch.cat(v) for v in out]
