"""Mahalanobis distance of pooled feature maps to one Gaussian fitted on the training images (per layer).

The segmentation-feature baseline of Karimi & Gholipour's comparison and of MedicOOD's "MD Pool" (single and
multi-layer). A segmentation network has no image label, so there is a single (class-free) Gaussian per layer:

1. pool the ``(C, *S)`` feature map of an image: global average (``pool_size=1``) or adaptive average pooling to
   ``pool_size`` cells per axis, flattened to ``D = C * pool_size^d``;
2. fit: streaming mean and covariance of the pooled features (:class:`~medood.detectors._stats.RunningMoments`,
   float64), optionally shrunk towards a scaled identity (``(1 - a) Sigma + a tr(Sigma) / D I``, useful when
   ``D`` approaches the number of training images), and its pseudo-inverse ``P``;
3. score: the squared distance ``(f - mu)^T P (f - mu)``
   (:meth:`medood.detectors.mahalanobis.MahalanobisDetector.min_distance` with one mean), per layer, combined by
   :meth:`~medood.detectors.base_featuremap.FeatureMapDetector.combine`.

For the ``"normalized"`` combination the training distances come from a seeded sample of at most
``max_samples`` training features (in-sample distances).

Score: higher = more OOD.

References:
    Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks",
    NeurIPS 2018; Lambert et al., "Multi-layer aggregation as a key to feature-based OOD detection",
    arXiv:2307.15647 (MD Pool single / multi).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medood.detectors._stats import RowSampler, RunningMoments
from medood.detectors.base_featuremap import FeatureMapDetector
from medood.detectors.mahalanobis import MahalanobisDetector
from medood.detectors.registry import register_detector

__all__ = ["FeatureMahalanobisDetector", "pool_features"]


def pool_features(features: Tensor, pool_size: int = 1) -> Tensor:
    """Average-pool ``(B, C, *S)`` to ``pool_size`` cells per spatial axis and flatten: ``(B, C * pool_size^d)``."""
    spatial = features.ndim - 2
    if spatial < 1:
        raise ValueError(f"feature maps must be (B, C, *spatial), got shape {tuple(features.shape)}")
    if pool_size == 1:
        return features.flatten(2).mean(-1)
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}.get(spatial)
    if pool is None:
        raise ValueError(f"pool_size > 1 supports 1-3 spatial axes, got {spatial}")
    return pool(features, pool_size).flatten(1)  # type: ignore[operator]


@register_detector("mahalanobis_pool")
class FeatureMahalanobisDetector(FeatureMapDetector):
    """Squared Mahalanobis distance of average-pooled feature maps to their training Gaussian, per layer.

    Args:
        model: the host network; optional with ``fit_features`` / ``score_features`` (then give ``layers``).
        layers: module names to hook (``None`` = the ``n_stages`` deepest encoder stages).
        n_stages: encoder stages taken when ``layers`` is ``None``. Defaults to 2.
        combine: ``"mean"`` or ``"normalized"`` per-layer distances. Defaults to ``"mean"``.
        pool_size: average-pooling cells per spatial axis (1 = global average). Defaults to 1.
        shrinkage: covariance shrinkage ``a`` in ``[0, 1]``. Defaults to 0 (the plain pseudo-inverse).
        max_samples: training features kept for the training-distance statistics. Defaults to 10 000.
        seed: seed of that sample. Defaults to 0.

    Attributes:
        mean_<i>: ``(D_i,)`` training mean of layer ``i``.
        precision_<i>: ``(D_i, D_i)`` pseudo-inverse of its covariance.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        layers: str | Sequence[str] | None = None,
        n_stages: int | None = None,
        combine: str = "mean",
        pool_size: int = 1,
        shrinkage: float = 0.0,
        max_samples: int = 10_000,
        seed: int = 0,
    ) -> None:
        super().__init__(model=model, layers=layers, n_stages=n_stages, combine=combine)
        if pool_size < 1 or max_samples < 1:
            raise ValueError(f"pool_size and max_samples must be >= 1, got {pool_size} and {max_samples}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        self.pool_size, self.shrinkage, self.max_samples, self.seed = pool_size, shrinkage, max_samples, seed
        for i in range(len(self.layers)):
            self.register_buffer(f"mean_{i}", torch.empty(0, dtype=torch.float64))
            self.register_buffer(f"precision_{i}", torch.empty(0, 0, dtype=torch.float64))
        self.reset_fit()

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """Light shrinkage: the toy training set has about as many images as pooled channels."""
        return {"shrinkage": 0.1}

    def pooled(self, features: Mapping[str, Any]) -> list[Tensor]:
        """``(B, D_i)`` float64 pooled features of every layer."""
        return [pool_features(f, self.pool_size).double() for f in self.layer_features(features)]

    def reset_fit(self) -> None:
        """Clear the running moments and samples."""
        self._moments = [RunningMoments() for _ in self.layers]
        self._samplers = [RowSampler(self.max_samples, self.seed) for _ in self.layers]

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Accumulate the moments of one batch of ``{layer: (B, C, *S)}`` (labels are not used)."""
        for moments, sampler, f in zip(self._moments, self._samplers, self.pooled(features)):
            moments.update(f)
            sampler.update(f)

    def finalize_fit(self) -> None:
        """Means, (shrunk) covariances and their pseudo-inverses; the training-distance statistics."""
        device = self.layer_mean.device
        for i, moments in enumerate(self._moments):
            assert moments.mean is not None
            cov = moments.covariance()
            if self.shrinkage > 0:
                target = torch.eye(cov.shape[0], dtype=cov.dtype) * (cov.diagonal().mean())
                cov = (1.0 - self.shrinkage) * cov + self.shrinkage * target
            setattr(self, f"mean_{i}", moments.mean.to(device))
            setattr(self, f"precision_{i}", torch.linalg.pinv(cov, hermitian=True).contiguous().to(device))
        samples = [sampler.sample()[0].to(device) for sampler in self._samplers]
        self.set_layer_statistics(self._distances(samples))
        self.reset_fit()

    def _distances(self, pooled: Sequence[Tensor]) -> Tensor:
        out = []
        for i, f in enumerate(pooled):
            mean, precision = getattr(self, f"mean_{i}"), getattr(self, f"precision_{i}")
            if f.shape[1] != mean.shape[0]:
                raise ValueError(f"layer {self.layers[i]!r}: {f.shape[1]} pooled features, fitted on {mean.shape[0]}")
            out.append(MahalanobisDetector.min_distance(f.to(mean), mean[None], precision))
        return torch.stack(out, dim=1)

    def score_layers(self, features: Mapping[str, Any]) -> Tensor:
        """``(B, L)`` squared Mahalanobis distances of each layer's pooled features."""
        return self._distances(self.pooled(features))
