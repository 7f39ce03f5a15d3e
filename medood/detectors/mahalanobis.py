"""Mahalanobis distance to class-conditional Gaussians with a shared (tied) covariance (Lee et al.).

Algorithm (on penultimate features ``f``, as the NERO code; no input pre-processing, no layer ensemble):

1. class means ``mu_c`` of the training features (ground-truth labels);
2. the tied covariance ``Sigma = 1/N sum_c sum_{i in c} (f_i - mu_c)(f_i - mu_c)^T`` (maximum-likelihood,
   as sklearn's ``EmpiricalCovariance(assume_centered=True)`` on class-centred features) and its
   pseudo-inverse ``P``;
3. ``M(x) = min_c (f - mu_c)^T P (f - mu_c)`` (the squared distance, as the official code; the ranking is that
   of the distance).

The fit streams: per-class running sums and a running total scatter matrix (Chan's merge, float64), with the
within-class scatter ``S_w = S_total - sum_c n_c (mu_c - mu)(mu_c - mu)^T`` formed at the end. Memory is
``O(C * D + D^2)`` whatever the number of training images.

Score: higher = more OOD: the detector returns ``M(x)``.

References:
    Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS 2018, https://arxiv.org/abs/1807.03888
    (code: https://github.com/pokaxpoka/deep_Mahalanobis_detector)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medood.detectors._stats import ClassSums, RunningMoments, class_labels
from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["MahalanobisDetector"]


@register_detector("mahalanobis")
class MahalanobisDetector(ClassifierDetector):
    """Minimum squared Mahalanobis distance to the class means under a shared covariance.

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``); its input is the feature.
        use_predicted_labels: fit on ``argmax(logits)`` when a batch has no labels (otherwise that is an
            error). Defaults to ``False``.
        weight: ``(C, D)`` head weight (only needed for predicted labels without logits).
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        class_means: ``(C', D)`` means of the classes seen in training.
        precision: ``(D, D)`` pseudo-inverse of the tied covariance.

    Example::

        det = MahalanobisDetector(model=classifier).fit(train_loader)  # batches {"image", "label"}
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES,)
    class_means: Tensor
    precision: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        use_predicted_labels: bool = False,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        self.use_predicted_labels = bool(use_predicted_labels)
        self.register_buffer("class_means", torch.empty(0, 0))
        self.register_buffer("precision", torch.empty(0, 0))
        self.reset_fit()

    def reset_fit(self) -> None:
        """Clear the running sums."""
        self._moments = RunningMoments()
        self._classes = ClassSums()

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Accumulate per-class sums and the total scatter of one batch of ``{"features": (B, D)}``."""
        f = flatten_features(self.get(features, FEATURES))
        logits = self.get(features, LOGITS) if labels is None and self.use_predicted_labels else None
        y = class_labels(logits, labels, type(self).__name__, self.use_predicted_labels)
        self._moments.update(f)
        self._classes.update(f, y.to(f.device))

    def finalize_fit(self) -> None:
        """Class means, tied covariance and its pseudo-inverse."""
        means, present = self._classes.means()
        assert self._moments.mean is not None
        assert self._moments.scatter is not None
        assert self._classes.counts is not None
        counts = self._classes.counts[present]
        diff = means - self._moments.mean
        within = self._moments.scatter - (diff.T * counts) @ diff
        cov = within / self._moments.n
        precision = torch.linalg.pinv(cov, hermitian=True)
        self.class_means = means.float().to(self.device)
        self.precision = precision.float().contiguous().to(self.device)
        self.reset_fit()

    @staticmethod
    def min_distance(features: Tensor, means: Tensor, precision: Tensor) -> Tensor:
        """``min_c (f - mu_c)^T P (f - mu_c)`` for ``features (B, D)``, ``means (C, D)``, ``precision (D, D)``."""
        dists = []
        for mu in means:
            d = features - mu
            dists.append(((d @ precision) * d).sum(dim=1))
        return torch.stack(dists, dim=1).amin(dim=1)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D)}``: the minimum squared Mahalanobis distance."""
        self.check_fitted()
        f = flatten_features(self.get(features, FEATURES)).to(self.precision.device)
        return OODOutput(image_score=self.min_distance(f, self.class_means, self.precision))
