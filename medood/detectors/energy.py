"""Energy score of Liu et al.: the free energy of the classifier's logits.

Algorithm: ``E(x; T) = -T * logsumexp_c(logits_c / T)``; in-distribution inputs have lower energy (larger
logits).

Score: higher = more OOD, so the detector returns the energy itself, ``-T * logsumexp(logits / T)``
(``T = 1`` by default, as in the paper's post-hoc setting and the NERO code).

References:
    Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020,
    https://arxiv.org/abs/2010.03759 (code: https://github.com/wetliu/energy_ood)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import LOGITS, LogitDetector
from medood.detectors.registry import register_detector

__all__ = ["EnergyDetector"]


@register_detector("energy")
class EnergyDetector(LogitDetector):
    """Free energy ``-T logsumexp(logits / T)`` of a classifier.

    Args:
        model: the trained classifier; optional with ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        temperature: energy temperature ``T``. Defaults to 1.
        weight: ``(C, D)`` head weight, to recompute logits from penultimate features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Example::

        det = EnergyDetector(model=classifier)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (LOGITS,)

    @staticmethod
    def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
        """``-T logsumexp(logits / T)`` of raw logits ``(B, C)``: the OOD score."""
        return -temperature * torch.logsumexp(logits.float() / temperature, dim=1)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score from ``{"logits": (B, C)}`` (or penultimate features plus a known head)."""
        return OODOutput(image_score=self.energy(self.get(features, LOGITS), self.temperature))
