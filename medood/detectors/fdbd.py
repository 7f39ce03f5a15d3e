"""fDBD (fast decision-boundary-based detector) of Liu & Qin: feature distance to the decision boundaries.

Algorithm (penultimate features ``z``, linear head ``W, b``, predicted class ``y = argmax_c logit_c``):

1. the distance from ``z`` to the boundary between ``y`` and another class ``c`` (the closed form of the
   paper, an upper bound of the true distance when the classifier is not linear):
   ``D(z, c) = |(w_c - w_y) z + (b_c - b_y)| / ||w_c - w_y|| = |logit_c - logit_y| / ||w_c - w_y||``;
2. average over the other classes and regularise by the distance to the training feature mean ``mu``
   (the paper's regulariser, OpenOOD's ``distance_as_normalizer: True``):
   ``fDBD(x) = 1/(C - 1) sum_{c != y} D(z, c) / ||z - mu||``.
   ``normalizer="norm"`` divides by ``||z||`` instead (OpenOOD's other choice, which it selects on OOD
   validation data; not the default here).

In-distribution features lie farther from the boundaries (relative to their distance to the mean). The official
code (``run_cifar.py``) and OpenOOD sum instead of averaging over ``c``, a factor ``C - 1`` that leaves the ranking
unchanged. The fit is the running mean of the training features (float64, memory ``O(D)``); the ``C x C``
weight-difference norms ``||w_c - w_y||`` are computed once from the head (a zero difference, i.e. two identical
rows, counts as 1).

Score: higher = more OOD: the detector returns ``-fDBD(x)``.

References:
    Liu & Qin, "Fast Decision Boundary based Out-of-Distribution Detector", ICML 2024,
    https://arxiv.org/abs/2312.11536 (code: https://github.com/litianliu/fDBD-OOD; OpenOOD v1.5
    ``openood/postprocessors/fdbd_postprocessor.py``)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, LOGITS, MeanFeatureDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["FDBDDetector"]

_NORMALIZERS = ("distance", "norm")


@register_detector("fdbd")
class FDBDDetector(MeanFeatureDetector):
    """Mean distance to the decision boundaries of the predicted class, over the distance to the training mean.

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        normalizer: ``"distance"`` (``||z - mu_train||``, the paper) or ``"norm"`` (``||z||``; needs no fit).
            Defaults to ``"distance"``.
        weight: ``(C, D)`` head weight, when no model is given.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        train_mean: ``(D,)`` mean of the training features.
        boundary_norms: ``(C, C)`` ``||w_c - w_y||`` (ones on the diagonal and for identical rows).

    Example::

        det = FDBDDetector(model=classifier).fit(train_loader)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES, LOGITS)
    needs_head = True
    train_mean: Tensor
    boundary_norms: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        normalizer: str = "distance",
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if normalizer not in _NORMALIZERS:
            raise ValueError(f"normalizer must be one of {_NORMALIZERS}, got {normalizer!r}")
        self.normalizer = normalizer
        w = self.head_weight.double()
        norms = torch.cdist(w, w)
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        self.register_buffer("boundary_norms", norms.float())
        self.register_buffer("train_mean", torch.zeros(self.head_weight.shape[1]))
        if normalizer == "norm":
            self.mark_fitted(True)  # ||z|| needs no training statistics
        self.reset_fit()

    def finalize_fit(self) -> None:
        """Store the training mean (``normalizer="norm"`` keeps zeros: ``||z - 0|| = ||z||``)."""
        if self.normalizer == "distance":
            self.train_mean = self.fitted_mean().float().to(self.device)
        self.reset_fit()

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D), "logits": (B, C)}``: ``-fDBD(x)``."""
        self.check_fitted()
        z = flatten_features(self.get(features, FEATURES)).to(self.boundary_norms)
        logits = self.get(features, LOGITS).to(z)
        top, pred = logits.max(dim=1)
        dist = (logits - top[:, None]).abs() / self.boundary_norms[pred]  # zero for c = y
        mean_dist = dist.sum(dim=1) / max(1, logits.shape[1] - 1)
        scale = (z - self.train_mean).norm(dim=1).clamp_min(torch.finfo(z.dtype).tiny)
        return OODOutput(image_score=-mean_dist / scale)
