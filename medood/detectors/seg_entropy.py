"""Prediction uncertainty of a segmentation network: softmax entropy averaged over the volume or the foreground.

The uncertainty baseline Karimi & Gholipour compare spectral signatures with:

1. voxel-wise entropy ``H = -sum_k p_k log p_k`` of ``p = softmax(logits / T)`` over the network's output
   channels (computed from ``log_softmax``: exact, no clipping);
2. averaged over the whole image (``region="volume"``) or over the voxels predicted as foreground
   (``argmax != background``; an image with no foreground voxel falls back to the whole image).

No fitting. It reads only the network output (layer ``""``), so a bundle's own forward pass feeds it. For a
classifier (``(B, K)`` logits) it is the predictive entropy of :class:`~medood.detectors.entropy.EntropyDetector`.

Score: higher = more OOD (more uncertain), in ``[0, log K]``.

References:
    Karimi & Gholipour, IEEE Trans. Artificial Intelligence 4(2), 2023, https://arxiv.org/abs/2004.06569
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from medood.detectors.base_featuremap import OUTPUT_LAYER, FeatureMapDetector, region_mean
from medood.detectors.registry import register_detector

__all__ = ["SegEntropyDetector", "voxel_entropy"]


def voxel_entropy(logits: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(entropy (B, *S), probabilities (B, K, *S))`` of logits ``(B, K, *S)`` (channel axis 1)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=1)
    p = logp.exp()
    return -(p * logp).sum(dim=1), p


@register_detector("seg_entropy")
class SegEntropyDetector(FeatureMapDetector):
    """Mean softmax entropy of a segmentation network's output over the volume or its predicted foreground.

    Args:
        model: the host network (its output is ``(B, K, *S)`` logits); optional with ``score_features``.
        region: ``"volume"`` or ``"foreground"``. Defaults to ``"foreground"``.
        temperature: softmax temperature (e.g. one fitted on validation data). Defaults to 1.
        background: index of the background class. Defaults to 0.

    Example::

        det = SegEntropyDetector(model=unet)
        scores = det.score(volumes).image_score  # (B,), higher = more uncertain
    """

    requires_fit = False

    def __init__(
        self, model: nn.Module | None = None, region: str = "foreground", temperature: float = 1.0, background: int = 0
    ) -> None:
        super().__init__(model=model, layers=[OUTPUT_LAYER])
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        region_mean(torch.zeros(1), torch.zeros(1, 1), region)  # validate early
        self.region, self.temperature, self.background = region, float(temperature), int(background)

    def score_layers(self, features: Mapping[str, Any]) -> Tensor:
        """``(B, 1)``: the mean entropy of the output."""
        (logits,) = self.layer_features(features)
        entropy, probs = voxel_entropy(logits, self.temperature)
        return region_mean(entropy, probs, self.region, self.background)[:, None]
