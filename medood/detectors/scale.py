"""SCALE of Xu, Chen, Franchi & Yao: rescale the penultimate activations by their top-k sum ratio, then energy.

Algorithm (per sample, penultimate activations ``a`` of ``D`` units, after global pooling as the paper and
OpenOOD; ``k = D - round(D p / 100)`` with ``p`` the percentile):

1. ``s1 = sum(a)``, ``s2`` = the sum of the ``k`` largest activations, ``r = s1 / s2``;
2. ``a' = a * exp(r)`` (every activation is kept: unlike ASH-S, SCALE does not prune);
3. logits ``W a' + b`` through the unchanged head, and their energy ``-logsumexp``.

Default ``p = 85`` (the official code's ``configs/postprocessors/scale.yml``, which OpenOOD v1.5 ships too).
No fit; SCALE scores the features of the shared backbone pass (no second pass). It assumes non-negative
(post-ReLU) activations, as the paper; ``s2 = 0`` gives ``r = 0``.

Score: higher = more OOD: the detector returns ``-logsumexp(W a' + b)``.

References:
    Xu, Chen, Franchi & Yao, "Scaling for Training Time and Post-hoc Out-of-distribution Detection
    Enhancement", ICLR 2024, https://arxiv.org/abs/2310.00227 (code: https://github.com/kai422/SCALE;
    OpenOOD v1.5 ``openood/networks/scale_net.py``)
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from medood.detectors.ash import sharpening, top_units
from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, ClassifierDetector, energy_of_features
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["SCALEDetector"]


@register_detector("scale")
class SCALEDetector(ClassifierDetector):
    """Energy of the logits recomputed from activations scaled by ``exp(sum / top-k sum)``.

    Args:
        model: the trained classifier; optional with ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        percentile: percentile ``p`` in ``[0, 100)`` fixing the top-``k`` size. Defaults to 85.
        weight: ``(C, D)`` head weight, when no model is given.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Example::

        det = SCALEDetector(model=classifier)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    requires_fit = False
    required_features = (FEATURES,)
    needs_head = True

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        percentile: float = 85.0,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if not 0.0 <= percentile < 100.0:
            raise ValueError(f"percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def scaled(self, features: Tensor) -> Tensor:
        """``a * exp(s1 / s2)`` of features ``(B, D)``."""
        values, _, s1 = top_units(features, self.percentile)
        return features * sharpening(s1, values.sum(dim=1))[:, None]

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D)}``: the energy of the logits of the scaled activations."""
        f = flatten_features(self.get(features, FEATURES)).to(self.head_weight)
        return OODOutput(image_score=energy_of_features(self.scaled(f), self.head_weight, self.head_bias))
