"""DICE (DIrected sparsification) of Sun & Li: keep only the last layer's strongest contributions, then energy.

Algorithm (penultimate features ``f``, linear head ``W (C, D), b``):

1. ``m`` = the mean training feature; the contribution matrix ``V = W * m`` (``V_cj = W_cj m_j``, the average
   contribution of unit ``j`` to class ``c``);
2. ``t`` = the ``p``-th percentile of all ``C x D`` entries of ``V`` (numpy's linear interpolation, as the
   official code); the mask ``M = 1[V > t]`` keeps the top ``(100 - p)`` % of the weights;
3. logits from the sparsified head ``(W * M) f + b`` and their energy ``-logsumexp``.

Default ``p = 90`` (the paper's CIFAR setting and OpenOOD v1.5's ``configs/postprocessors/dice.yml``; the paper
uses 70 on ImageNet). The fit is the running mean of the training features (float64, memory ``O(D)``). DICE
modifies only the last layer: it scores the penultimate features of the shared backbone pass, no second pass.

Score: higher = more OOD: the detector returns ``-logsumexp((W * M) f + b)``.

References:
    Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection", ECCV 2022,
    https://arxiv.org/abs/2111.09805 (code: https://github.com/deeplearning-wisc/dice; pytorch-ood 0.4.0
    ``detector/dice.py``; OpenOOD v1.5 ``openood/postprocessors/dice_postprocessor.py``)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, MeanFeatureDetector, energy_of_features
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["DICEDetector"]


@register_detector("dice")
class DICEDetector(MeanFeatureDetector):
    """Energy of the logits through a last layer sparsified by its mean contributions.

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        percentile: sparsity ``p`` in ``[0, 100)``: the share of weights dropped. Defaults to 90.
        weight: ``(C, D)`` head weight, when no model is given.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        mean_feature: ``(D,)`` mean training feature ``m``.
        masked_weight: ``(C, D)`` ``W * 1[W * m > t]``.

    Example::

        det = DICEDetector(model=classifier).fit(train_loader)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES,)
    needs_head = True
    mean_feature: Tensor
    masked_weight: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        percentile: float = 90.0,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if not 0.0 <= percentile < 100.0:
            raise ValueError(f"percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)
        self.register_buffer("mean_feature", torch.empty(0))
        self.register_buffer("masked_weight", torch.empty(0, 0))
        self.reset_fit()

    def finalize_fit(self) -> None:
        """The mean feature, the contribution threshold and the masked weight."""
        mean = self.fitted_mean()
        contrib = self.head_weight.double().cpu() * mean.cpu()[None, :]
        threshold = float(np.percentile(contrib.numpy(), self.percentile))
        mask = (contrib > threshold).to(self.head_weight)
        self.mean_feature = mean.float().to(self.device)
        self.masked_weight = (self.head_weight * mask.to(self.device)).contiguous()
        self.reset_fit()

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D)}``: the energy of the sparsified logits."""
        self.check_fitted()
        f = flatten_features(self.get(features, FEATURES)).to(self.masked_weight)
        return OODOutput(image_score=energy_of_features(f, self.masked_weight, self.head_bias))
