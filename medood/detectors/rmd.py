"""Relative Mahalanobis distance (RMD) of Ren et al.: class-conditional Mahalanobis minus a background Gaussian.

Algorithm (on penultimate features ``f``; as the paper, pytorch-ood's ``RMD`` and OpenOOD v1.5's ``rmds``):

1. class-conditional Gaussians ``N(mu_c, Sigma)`` with a shared covariance, exactly as
   :class:`~medood.detectors.mahalanobis.MahalanobisDetector` (ground-truth labels, maximum-likelihood tied
   covariance, pseudo-inverse): ``MD_c(x) = (f - mu_c)^T Sigma^+ (f - mu_c)``;
2. a background Gaussian ``N(mu_0, Sigma_0)`` fitted to all training features, class-agnostic (maximum-likelihood
   covariance, pseudo-inverse): ``MD_0(x) = (f - mu_0)^T Sigma_0^+ (f - mu_0)``;
3. ``RMD(x) = min_c (MD_c(x) - MD_0(x)) = min_c MD_c(x) - MD_0(x)``.

The fit streams as the Mahalanobis one (per-class sums plus one running total scatter, float64); the
background covariance is the total scatter divided by ``N``, so it costs nothing extra. Memory ``O(C D + D^2)``.

Score: higher = more OOD: the detector returns ``RMD(x)`` (OpenOOD returns ``max_c -(MD_c - MD_0)`` as its ID
confidence, pytorch-ood returns ``min_c (MD_c - MD_0)``: the same).

References:
    Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, "A Simple Fix to Mahalanobis Distance for Improving Near-OOD
    Detection", ICML 2021 UDL workshop, https://arxiv.org/abs/2106.09022
    (pytorch-ood 0.4.0 ``detector/rmd.py``; OpenOOD v1.5 ``openood/postprocessors/rmds_postprocessor.py``)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES
from medood.detectors.mahalanobis import MahalanobisDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["RMDDetector"]


@register_detector("rmd")
class RMDDetector(MahalanobisDetector):
    """Minimum class-conditional Mahalanobis distance minus the distance under a background Gaussian.

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``); its input is the feature.
        use_predicted_labels: fit on ``argmax(logits)`` when a batch has no labels (otherwise that is an
            error). Defaults to ``False``.
        weight: ``(C, D)`` head weight (only needed for predicted labels without logits).
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        class_means: ``(C', D)`` means of the classes seen in training.
        precision: ``(D, D)`` pseudo-inverse of the tied class covariance.
        background_mean: ``(D,)`` mean of all training features.
        background_precision: ``(D, D)`` pseudo-inverse of their covariance.

    Example::

        det = RMDDetector(model=classifier).fit(train_loader)  # batches {"image", "label"}
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    background_mean: Tensor
    background_precision: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        use_predicted_labels: bool = False,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, use_predicted_labels=use_predicted_labels, weight=weight, bias=bias)
        self.register_buffer("background_mean", torch.empty(0))
        self.register_buffer("background_precision", torch.empty(0, 0))

    def finalize_fit(self) -> None:
        """Class means and tied precision (as Mahalanobis), plus the background Gaussian of all features."""
        m = self._moments
        if m.mean is None:
            raise ValueError("RMDDetector.finalize_fit: no training features were seen")
        background = torch.linalg.pinv(m.covariance(), hermitian=True)
        self.background_mean = m.mean.float().to(self.device)
        self.background_precision = background.float().contiguous().to(self.device)
        super().finalize_fit()

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D)}``: ``min_c MD_c(x) - MD_0(x)``."""
        self.check_fitted()
        f = flatten_features(self.get(features, FEATURES)).to(self.precision.device)
        class_md = self.min_distance(f, self.class_means, self.precision)
        d0 = f - self.background_mean
        return OODOutput(image_score=class_md - ((d0 @ self.background_precision) * d0).sum(dim=1))
