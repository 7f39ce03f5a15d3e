"""NECO (NEural COllapse-based OOD detection) of Ammar et al.

Algorithm (as the official NECO code and the NERO code):

1. standardise the penultimate features with the training mean and standard deviation
   (``z = (f - mean) / std``, sklearn's ``StandardScaler``: population std, a zero std replaced by 1);
2. PCA of the standardised training features; ``P_k`` projects on the top ``k = neco_dim`` components
   (default 100, clipped to ``D - 1`` with a warning: ``k >= D`` makes the score constant);
3. ``NECO(x) = ||P_k z|| / ||z||``, in ``[0, 1]``, higher for in-distribution inputs (neural collapse puts
   ID features near the span of the class means).

Two options reproduce the code's per-architecture switches (both off = the ResNet path, the NERO default):

* ``multiply_maxlogit``: multiply by the max logit. The official code does this for every model that is
  *not* a ResNet (ViT, DeiT, Swin, ...), as does the NERO code (all but ResNet-18);
* ``standardize_norm=False``: the denominator is ``||f||`` of the raw features instead of ``||z||``. The
  official code does this for DeiT and Swin.

The fit streams: the exact running mean and covariance of the raw features (float64, memory ``O(D^2)``) give the
standardiser and the PCA of the standardised features (``cov_z = cov_f / (std std^T)``). The PCA mean of the
standardised training features is zero, so ``P_k z = V_k^T z``.

Score: higher = more OOD: the detector returns ``-NECO(x)`` (times the max logit if enabled).

References:
    Ammar, Belkhir, Popescu, Manzanera & Franchi, "NECO: NEural Collapse Based Out-of-distribution
    Detection", ICLR 2024, https://arxiv.org/abs/2310.06823 (code: https://github.com/gigug/NECO)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from medood.detectors._stats import RunningMoments, top_eigh
from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["NECODetector"]

logger = logging.getLogger(__name__)


@register_detector("neco")
class NECODetector(ClassifierDetector):
    """Share of the standardised feature's norm inside the top-``k`` principal subspace (negated).

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``); its input is the feature.
        neco_dim: number of principal components ``k``. Defaults to 100.
        multiply_maxlogit: multiply the ratio by the max logit (the official code's non-ResNet path).
            Defaults to ``False``.
        standardize_norm: divide by the norm of the standardised feature (``True``, the ResNet path) or of the
            raw feature (``False``, the DeiT/Swin path). Defaults to ``True``.
        weight: ``(C, D)`` head weight, to recompute logits from features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        feature_mean: ``(D,)`` training mean.
        feature_std: ``(D,)`` training standard deviation (zeros replaced by 1).
        components: ``(D, k)`` top principal directions of the standardised features.

    Example::

        det = NECODetector(model=classifier, neco_dim=100).fit(train_loader)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES,)
    feature_mean: Tensor
    feature_std: Tensor
    components: Tensor

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """A 4-dimensional NECO subspace (the toy features are 16-dimensional)."""
        return {"neco_dim": 4}

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        neco_dim: int = 100,
        multiply_maxlogit: bool = False,
        standardize_norm: bool = True,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if neco_dim < 1:
            raise ValueError(f"neco_dim must be >= 1, got {neco_dim}")
        self.neco_dim = int(neco_dim)
        self.multiply_maxlogit = bool(multiply_maxlogit)
        self.standardize_norm = bool(standardize_norm)
        self.register_buffer("feature_mean", torch.empty(0))
        self.register_buffer("feature_std", torch.empty(0))
        self.register_buffer("components", torch.empty(0, 0))
        self.reset_fit()

    def reset_fit(self) -> None:
        """Clear the running moments."""
        self._moments = RunningMoments()

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Accumulate one batch of ``{"features": (B, D)}`` (labels are not used)."""
        self._moments.update(flatten_features(self.get(features, FEATURES)))

    def finalize_fit(self) -> None:
        """Standardiser and principal components of the standardised training features."""
        m = self._moments
        if m.mean is None:
            raise ValueError("NECODetector.finalize_fit: no training features were seen")
        cov = m.covariance()
        std = cov.diagonal().clamp_min(0).sqrt()
        std = torch.where(std < 10 * torch.finfo(torch.float64).eps, torch.ones_like(std), std)
        d = cov.shape[0]
        k = min(self.neco_dim, d - 1)
        if k < self.neco_dim:
            logger.warning("NECO: neco_dim=%d >= feature dim %d; using %d components", self.neco_dim, d, k)
        if m.n <= k:  # the standardised covariance has rank <= N - 1: the trailing directions are arbitrary
            logger.warning(
                "NECO: %d training samples for %d principal components; trailing components are arbitrary", m.n, k
            )
        _, vecs = top_eigh(cov / torch.outer(std, std))
        self.feature_mean = m.mean.float().to(self.device)
        self.feature_std = std.float().to(self.device)
        self.components = vecs[:, : max(k, 1)].float().contiguous().to(self.device)
        self.reset_fit()

    def ratio(self, features: Tensor) -> Tensor:
        """``||P_k z|| / ||z||`` (or ``/ ||f||``) for raw features ``(B, D)``."""
        z = (features - self.feature_mean) / self.feature_std
        denom = z.norm(dim=1) if self.standardize_norm else features.norm(dim=1)
        return (z @ self.components).norm(dim=1) / denom.clamp_min(torch.finfo(z.dtype).tiny)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D)}`` (plus ``"logits"`` with ``multiply_maxlogit``)."""
        self.check_fitted()
        f = flatten_features(self.get(features, FEATURES)).to(self.components)
        score = self.ratio(f)
        if self.multiply_maxlogit:
            score = score * self.get(features, LOGITS).to(score).amax(dim=1)
        return OODOutput(image_score=-score)
