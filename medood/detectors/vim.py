"""ViM (Virtual-logit Matching) of Wang et al.: energy combined with the feature residual off the principal space.

Algorithm (as the official ViM code and the NERO code):

1. origin ``u = -pinv(W) b`` (the point whose logits are zero);
2. principal space: the top ``DIM`` eigenvectors of ``1/N sum_i (f_i - u)(f_i - u)^T`` (``DIM = D/2`` for
   ``D < 768``, 512 for ``768 <= D < 2048``, 1000 otherwise; clipped to ``[1, D - 1]``); ``NS`` spans the rest;
3. residual norm ``r(x) = ||(f - u) NS||``; ``alpha = mean_train max_c logits_c / mean_train r``;
4. virtual logit ``alpha * r(x)``; ViM's OOD score is ``alpha * r(x) - logsumexp(logits)``.

Streaming fit: the second moment about ``u`` is accumulated exactly (float64, memory ``O(D^2)``), as is the
mean max-logit. ``mean_train r`` needs the principal space first, i.e. a second look at the data: it is taken
over a bounded seeded uniform sample of the training features (``fit_sample_size`` rows, default 20 000;
exact, i.e. over every training image, whenever ``N <= fit_sample_size``).

Score: higher = more OOD: the detector returns ``-(logsumexp(logits) - alpha * r(x))``.

References:
    Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022,
    https://arxiv.org/abs/2203.10807 (code: https://github.com/haoqiwang/vim)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medood.detectors._stats import RowSampler, RunningMoments, top_eigh
from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["ViMDetector"]

logger = logging.getLogger(__name__)


def default_principal_dim(d: int) -> int:
    """ViM's principal-space size for feature dimension ``d``, clipped to ``[1, d - 1]``."""
    dim = 1000 if d >= 2048 else 512 if d >= 768 else d // 2
    return max(1, min(dim, d - 1))


@register_detector("vim")
class ViMDetector(ClassifierDetector):
    """Virtual-logit matching on the penultimate features of a classifier with a linear head.

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        principal_dim: size of the principal space. Defaults to ViM's rule (see the module docstring).
        fit_sample_size: training features kept (seeded uniform sample) for ``alpha``. Defaults to 20 000.
        seed: seed of that sample. Defaults to 0.
        weight: ``(C, D)`` head weight, when no model is given.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        origin: ``(D,)`` ``u = -pinv(W) b``.
        null_space: ``(D, D - DIM)`` basis of the residual space.
        alpha: scalar virtual-logit scale.

    Example::

        det = ViMDetector(model=classifier).fit(train_loader)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES, LOGITS)
    needs_head = True
    origin: Tensor
    null_space: Tensor
    alpha: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        principal_dim: int | None = None,
        fit_sample_size: int = 20_000,
        seed: int = 0,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if principal_dim is not None and principal_dim < 1:
            raise ValueError(f"principal_dim must be >= 1, got {principal_dim}")
        self.principal_dim = principal_dim
        self.fit_sample_size = int(fit_sample_size)
        self.seed = int(seed)
        self.register_buffer(
            "origin", -(torch.linalg.pinv(self.head_weight.double()) @ self.head_bias.double()).float()
        )
        self.register_buffer("null_space", torch.empty(0, 0))
        self.register_buffer("alpha", torch.zeros(()))
        self.reset_fit()

    def reset_fit(self) -> None:
        """Clear the running second moment, max-logit sum and feature sample."""
        self._moments = RunningMoments()
        self._maxlogit_sum = 0.0
        self._sampler = RowSampler(self.fit_sample_size, self.seed)

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Accumulate one batch of ``{"features": (B, D), "logits": (B, C)}`` (labels are not used)."""
        f = flatten_features(self.get(features, FEATURES))
        if f.shape[1] != self.origin.shape[0]:
            raise ValueError(f"features have {f.shape[1]} dims but the head expects {self.origin.shape[0]}")
        self._moments.update(f - self.origin.to(f))
        self._maxlogit_sum += float(self.get(features, LOGITS).amax(dim=1).double().sum())
        self._sampler.update(f.float())

    def finalize_fit(self) -> None:
        """Principal space, residual basis and ``alpha``."""
        m = self._moments
        if m.mean is None:
            raise ValueError("ViMDetector.finalize_fit: no training features were seen")
        second_moment = m.covariance() + torch.outer(m.mean, m.mean)  # 1/N sum (f - u)(f - u)^T
        d = second_moment.shape[0]
        dim = default_principal_dim(d) if self.principal_dim is None else min(self.principal_dim, d - 1)
        if m.n <= dim:  # the second moment has rank <= N: the principal space is partly arbitrary, so is the residual
            logger.warning(
                "ViM: %d training samples for a %d-dimensional principal space; it is partly arbitrary", m.n, dim
            )
        _, vecs = top_eigh(second_moment)
        null_space = vecs[:, dim:].float().contiguous().to(self.device)
        sample, _ = self._sampler.sample()
        resid = ((sample.to(null_space) - self.origin) @ null_space).norm(dim=1)
        mean_resid = float(resid.double().mean())
        if mean_resid <= 0:
            raise ValueError("ViM: the training features have no residual off the principal space")
        self.null_space = null_space
        self.alpha = torch.tensor(self._maxlogit_sum / m.n / mean_resid, dtype=torch.float32, device=self.device)
        self.reset_fit()

    def residual_norm(self, features: Tensor) -> Tensor:
        """``||(f - u) NS||`` of features ``(B, D)``."""
        return ((features - self.origin) @ self.null_space).norm(dim=1)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D), "logits": (B, C)}``: ``alpha * r(x) - logsumexp(logits)``."""
        self.check_fitted()
        f = flatten_features(self.get(features, FEATURES)).to(self.null_space.device)
        energy = torch.logsumexp(self.get(features, LOGITS).to(f), dim=1)
        return OODOutput(image_score=self.alpha * self.residual_norm(f) - energy)
