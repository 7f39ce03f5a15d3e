"""GEN (generalised entropy) of Liu, Lochman & Zach: a softmax score that keeps only the top-M probabilities.

Algorithm: ``p = softmax(logits)``; sort descending and keep the ``M`` largest, ``p_(1) >= ... >= p_(M)``;
``G_gamma(p) = sum_{j <= M} p_(j)^gamma (1 - p_(j))^gamma``. The generalised entropy is small for a confident
(one-hot-like) prediction and large for a flat one.

Defaults are the paper's and OpenOOD v1.5's (``configs/postprocessors/gen.yml``): ``gamma = 0.1``, ``M = 100``;
``M`` is capped at the number of classes (with fewer than 100 classes every probability is kept).

Score: higher = more OOD: the detector returns ``G_gamma(p)`` itself (OpenOOD returns ``-G`` as its ID
confidence; the ranking is the same).

References:
    Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection", CVPR 2023,
    https://openaccess.thecvf.com/content/CVPR2023/html/Liu_GEN_Pushing_the_Limits_of_Softmax-Based_Out-of-Distribution_Detection_CVPR_2023_paper.html
    (OpenOOD v1.5 ``openood/postprocessors/gen_postprocessor.py``)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import LOGITS, ClassifierDetector
from medood.detectors.registry import register_detector

__all__ = ["GENDetector"]


@register_detector("gen")
class GENDetector(ClassifierDetector):
    """Generalised entropy of the top-``M`` softmax probabilities.

    Args:
        model: the trained classifier; optional with ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        gamma: exponent ``gamma`` in ``(0, 1)`` (the paper's range). Defaults to 0.1.
        top_m: number ``M`` of the largest probabilities kept (capped at the number of classes). Defaults to 100.
        weight: ``(C, D)`` head weight, to recompute logits from penultimate features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Example::

        det = GENDetector(model=classifier)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    requires_fit = False
    required_features = (LOGITS,)

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        gamma: float = 0.1,
        top_m: int = 100,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        if top_m < 1:
            raise ValueError(f"top_m must be >= 1, got {top_m}")
        self.gamma = float(gamma)
        self.top_m = int(top_m)

    @staticmethod
    def generalized_entropy(logits: Tensor, gamma: float = 0.1, top_m: int = 100) -> Tensor:
        """``sum_{j <= M} p_(j)^gamma (1 - p_(j))^gamma`` of raw logits ``(B, C)``: the OOD score."""
        probs = torch.softmax(logits.float(), dim=1)
        top = probs.topk(min(top_m, probs.shape[1]), dim=1).values
        return (top.pow(gamma) * (1.0 - top).clamp_min(0).pow(gamma)).sum(dim=1)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score from ``{"logits": (B, C)}`` (or penultimate features plus a known head)."""
        return OODOutput(image_score=self.generalized_entropy(self.get(features, LOGITS), self.gamma, self.top_m))
