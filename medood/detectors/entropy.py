"""Predictive entropy of the classifier's softmax.

Algorithm: ``H(p) = -sum_c p_c log p_c`` with ``p = softmax(logits)``; a confident (in-distribution)
prediction has low entropy. Computed from ``log_softmax`` (exact, no clipping; the NERO code clips ``p`` at
1e-6 before the log, which differs only for probabilities below 1e-6).

Score: higher = more OOD, so the detector returns the entropy itself (in ``[0, log C]``).

References:
    Shannon, "A Mathematical Theory of Communication", 1948; used as an OOD baseline e.g. in
    Chhetri et al., "NERO", MICCAI 2025, https://arxiv.org/abs/2506.15404
    (code: https://github.com/bhattarailab/NERO, ``ood/cv_uncertainty.py``)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import LOGITS, LogitDetector
from medood.detectors.registry import register_detector

__all__ = ["EntropyDetector"]


@register_detector("entropy")
class EntropyDetector(LogitDetector):
    """Entropy of the softmax prediction of a classifier.

    Args:
        model: the trained classifier; optional with ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        temperature: softmax temperature. Defaults to 1.
        weight: ``(C, D)`` head weight, to recompute logits from penultimate features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Example::

        det = EntropyDetector(model=classifier)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (LOGITS,)

    @staticmethod
    def entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
        """``-sum_c p_c log p_c`` of ``p = softmax(logits / T)`` for raw logits ``(B, C)``: the OOD score."""
        logp = torch.log_softmax(logits.float() / temperature, dim=1)
        return -(logp.exp() * logp).sum(dim=1)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score from ``{"logits": (B, C)}`` (or penultimate features plus a known head)."""
        return OODOutput(image_score=self.entropy(self.get(features, LOGITS), self.temperature))
