"""Maximum softmax probability (MSP), the baseline of Hendrycks & Gimpel.

Algorithm: ``p = softmax(logits)``; the confidence ``max_c p_c`` is higher for in-distribution inputs.

Score: higher = more OOD, so the detector returns ``-max_c softmax(logits)_c`` (in ``[-1, -1/C]``).

References:
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural
    Networks", ICLR 2017, https://arxiv.org/abs/1610.02136
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import LOGITS, LogitDetector
from medood.detectors.registry import register_detector

__all__ = ["MSPDetector"]


@register_detector("msp")
class MSPDetector(LogitDetector):
    """Negative maximum softmax probability of a classifier.

    Args:
        model: the trained classifier; optional with ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        temperature: softmax temperature. Defaults to 1.

    Example::

        det = MSPDetector(model=classifier)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (LOGITS,)

    @staticmethod
    def msp(logits: Tensor, temperature: float = 1.0) -> Tensor:
        """``-max softmax(logits / T)``: the OOD score from raw logits ``(B, C)``."""
        return -torch.softmax(logits.float() / temperature, dim=1).amax(dim=1)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score from ``{"logits": (B, C)}`` (or penultimate features plus a known head)."""
        return OODOutput(image_score=self.msp(self.get(features, LOGITS), self.temperature))
