"""Maximum logit (MaxLogit) of Hendrycks et al.

Algorithm: the largest unnormalised logit ``max_c logits_c`` is higher for in-distribution inputs; unlike the
softmax probability it keeps the logits' scale.

Score: higher = more OOD, so the detector returns ``-max_c logits_c`` (as the NERO code does).

References:
    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022,
    https://arxiv.org/abs/1911.11132 (code: https://github.com/hendrycks/anomaly-seg)
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import LOGITS, ClassifierDetector
from medood.detectors.registry import register_detector

__all__ = ["MaxLogitDetector"]


@register_detector("maxlogit")
class MaxLogitDetector(ClassifierDetector):
    """Negative maximum logit of a classifier.

    Args:
        model: the trained classifier; optional with ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        weight: ``(C, D)`` head weight, to recompute logits from penultimate features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Example::

        det = MaxLogitDetector(model=classifier)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    requires_fit = False
    required_features = (LOGITS,)

    @staticmethod
    def max_logit(logits: Tensor) -> Tensor:
        """``-max_c logits_c`` of raw logits ``(B, C)``: the OOD score."""
        return -logits.float().amax(dim=1)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score from ``{"logits": (B, C)}`` (or penultimate features plus a known head)."""
        return OODOutput(image_score=self.max_logit(self.get(features, LOGITS)))
