"""GradNorm of Huang et al.: the size of the gradient of KL(uniform || softmax) w.r.t. the last layer.

Algorithm: with penultimate features ``a`` (``D``), logits ``z = W a + b`` (``C``), ``p = softmax(z / T)`` and
the uniform ``u = 1/C``, the loss ``L = KL(u || p) = -1/C sum_c log p_c + const`` has
``dL/dz = (p - u) / T`` and ``dL/dW = (p - u) a^T / T``, so its entry-wise L1 norm has the closed form

    ``GradNorm(x) = ||dL/dW||_1 = ||p - u||_1 * ||a||_1 / T``

(verified against autograd in the tests; no backward pass is needed). In-distribution inputs give larger
gradients. The official GradNorm (and NERO) code sums instead of averaging over the classes
(``-sum_c log p_c``), which multiplies GradNorm by the constant ``C`` and does not change any ranking.

Score: higher = more OOD, so the detector returns ``-GradNorm(x)``.

References:
    Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts in the Wild",
    NeurIPS 2021, https://arxiv.org/abs/2110.00218 (code: https://github.com/deeplearning-wisc/gradnorm_ood)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, LOGITS, LogitDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["GradNormDetector"]


@register_detector("gradnorm")
class GradNormDetector(LogitDetector):
    """Negative L1 norm of the last-layer weight gradient of KL(uniform || softmax), in closed form.

    Args:
        model: the trained classifier; optional with ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        temperature: softmax temperature ``T``. Defaults to 1 (as the paper).
        weight: ``(C, D)`` head weight, to recompute logits from features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Example::

        det = GradNormDetector(model=classifier)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES, LOGITS)

    @staticmethod
    def gradnorm(features: Tensor, logits: Tensor, temperature: float = 1.0) -> Tensor:
        """``||softmax(z / T) - 1/C||_1 * ||a||_1 / T`` for features ``a (B, D)`` and logits ``z (B, C)``."""
        p = torch.softmax(logits.float() / temperature, dim=1)
        uniform = 1.0 / p.shape[1]
        return (p - uniform).abs().sum(dim=1) * features.float().abs().sum(dim=1) / temperature

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score from ``{"features": (B, D), "logits": (B, C)}`` (logits recomputed from a known head if absent)."""
        a = flatten_features(self.get(features, FEATURES))
        return OODOutput(image_score=-self.gradnorm(a, self.get(features, LOGITS), self.temperature))
