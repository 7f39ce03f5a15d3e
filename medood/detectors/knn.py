"""Deep nearest neighbours (KNN) of Sun et al. on L2-normalised penultimate features.

Algorithm:

1. normalise the training features ``z_i = f_i / ||f_i||`` and keep them as a memory bank;
2. for a test input, ``z = f / ||f||`` and the distance to its ``k``-th nearest neighbour in the bank,
   ``d_k(x) = ||z - z_(k)||`` (``k = 50`` as the paper's default; clipped to the bank size, with a warning).

The bank is bounded: at most ``bank_size`` rows (default 50 000). When the training set is larger, a seeded
uniform sample of that many training features is kept (bottom-k sampling on hashed row indices, so the sample
does not depend on the batching). The paper subsamples the training set the same way for large datasets (it
reports 1 % of ImageNet with little loss). Distances are computed in chunks (``chunk_size`` queries x
``chunk_size`` bank rows at a time) with a running top-k, so scoring memory is bounded too.

Score: higher = more OOD: the detector returns ``d_k(x)`` (the official code returns minus the *squared*
distance from faiss as an ID score; the ranking is the same).

References:
    Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022,
    https://arxiv.org/abs/2204.06507 (code: https://github.com/deeplearning-wisc/knn-ood)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medood.detectors._stats import RowSampler
from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, ClassifierDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["KNNDetector", "kth_nn_distance"]

logger = logging.getLogger(__name__)


def kth_nn_distance(queries: Tensor, bank: Tensor, k: int, chunk_size: int = 4096) -> Tensor:
    """Euclidean distance from each query ``(B, D)`` to its ``k``-th nearest row of ``bank (M, D)``.

    Computed in ``chunk_size`` x ``chunk_size`` blocks, keeping a running ``k`` smallest per query.
    """
    k = min(k, bank.shape[0])
    out = []
    for q in queries.split(chunk_size):
        best = q.new_full((q.shape[0], 0), float("inf"))
        for b in bank.split(chunk_size):
            d = torch.cdist(q, b)
            best = torch.topk(torch.cat([best, d], dim=1), min(k, best.shape[1] + d.shape[1]), largest=False).values
        out.append(best.amax(dim=1))
    return torch.cat(out)


@register_detector("knn")
class KNNDetector(ClassifierDetector):
    """Distance to the ``k``-th nearest training feature (L2-normalised).

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``); its input is the feature.
        k: neighbour rank. Defaults to 50.
        bank_size: the most training features kept. Defaults to 50 000.
        normalize: L2-normalise the features (the method's key step). Defaults to ``True``.
        chunk_size: rows per distance block. Defaults to 4096.
        seed: seed of the bank sample when the training set is larger than ``bank_size``. Defaults to 0.

    Attributes:
        bank: ``(M, D)`` training features, ``M <= bank_size``.

    Example::

        det = KNNDetector(model=classifier, k=50).fit(train_loader)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES,)
    bank: Tensor

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """Five neighbours (the toy training sets are small)."""
        return {"k": 5}

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        k: int = 50,
        bank_size: int = 50_000,
        normalize: bool = True,
        chunk_size: int = 4096,
        seed: int = 0,
    ) -> None:
        super().__init__(model=model, head=head)
        if k < 1 or bank_size < 1 or chunk_size < 1:
            raise ValueError(f"k, bank_size and chunk_size must be >= 1, got {k}, {bank_size}, {chunk_size}")
        self.k = int(k)
        self.bank_size = int(bank_size)
        self.normalize = bool(normalize)
        self.chunk_size = int(chunk_size)
        self.seed = int(seed)
        self.register_buffer("bank", torch.empty(0, 0))
        self.reset_fit()

    def _embed(self, features: Mapping[str, Tensor]) -> Tensor:
        f = flatten_features(self.get(features, FEATURES))
        return F.normalize(f, dim=1) if self.normalize else f

    def reset_fit(self) -> None:
        """Empty the bank sample."""
        self._sampler = RowSampler(self.bank_size, self.seed)

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Offer one batch of ``{"features": (B, D)}`` to the bank (labels are not used)."""
        self._sampler.update(self._embed(features))

    def finalize_fit(self) -> None:
        """Store the bank."""
        bank, _ = self._sampler.sample()
        if self._sampler.seen > self.bank_size:
            logger.info(
                "KNN bank holds a uniform sample of %d of %d training features", bank.shape[0], self._sampler.seen
            )
        if bank.shape[0] < self.k:
            logger.warning(
                "KNN: k=%d exceeds the %d training features; using k=%d", self.k, bank.shape[0], bank.shape[0]
            )
        self.bank = bank.float().to(self.device)
        self.reset_fit()

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D)}``: distance to the ``k``-th nearest bank row."""
        self.check_fitted()
        z = self._embed(features).to(self.bank)
        return OODOutput(image_score=kth_nn_distance(z, self.bank, self.k, self.chunk_size))
