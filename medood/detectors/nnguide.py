"""NNGuide (nearest-neighbour guidance) of Park, Jung & Teoh: a classifier's energy guided by its training neighbours.

Algorithm (penultimate features ``f``, logits ``l``):

1. bank: every kept training feature L2-normalised and scaled by its own confidence,
   ``g_i = (f_i / ||f_i||) * logsumexp(l_i)``;
2. guidance of a test input: the mean of its ``k`` largest inner products with the bank,
   ``G(x) = mean_topk_i <f / ||f||, g_i>``;
3. ``NNGuide(x) = G(x) * logsumexp(l)``, higher for in-distribution inputs.

Defaults: ``k = 10``, the official code's ``configs/detector/nnguide.yaml`` (OpenOOD v1.5 uses ``K = 100``); ``k``
is clipped to the bank size (with a warning). The bank is bounded: at most ``bank_size`` rows (default 50 000),
a seeded uniform sample of the training set when it is larger (bottom-k sampling on hashed row indices, as KNN:
independent of the batching). The paper subsamples the same way for speed (1 % of ImageNet, OpenOOD's
``alpha = 0.01``); a fraction is not used here because medical training sets are small (1 % of 180 images would
be 2 rows), so the whole set is kept up to the cap. Inner products are taken in chunks of ``chunk_size`` bank
rows with a running top-k, so scoring memory is bounded too.

Score: higher = more OOD: the detector returns ``-G(x) * logsumexp(l)``.

References:
    Park, Jung & Teoh, "Nearest Neighbor Guidance for Out-of-Distribution Detection", ICCV 2023,
    https://arxiv.org/abs/2309.14888 (code: https://github.com/roomo7time/nnguide; OpenOOD v1.5
    ``openood/postprocessors/nnguide_postprocessor.py``)
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
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["NNGuideDetector", "mean_topk_similarity"]

logger = logging.getLogger(__name__)


def mean_topk_similarity(queries: Tensor, bank: Tensor, k: int, chunk_size: int = 4096) -> Tensor:
    """Mean of the ``k`` largest inner products of each query ``(B, D)`` with the rows of ``bank (M, D)``."""
    k = min(k, bank.shape[0])
    best = queries.new_full((queries.shape[0], 0), float("-inf"))
    for b in bank.split(chunk_size):
        sims = torch.cat([best, queries @ b.T], dim=1)
        best = sims.topk(min(k, sims.shape[1]), dim=1).values
    return best.mean(dim=1)


@register_detector("nnguide")
class NNGuideDetector(ClassifierDetector):
    """Energy times the mean similarity to the ``k`` nearest confidence-scaled training features (negated).

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``); its input is the feature.
        k: neighbours averaged. Defaults to 10.
        bank_size: the most training features kept. Defaults to 50 000.
        chunk_size: bank rows per similarity block. Defaults to 4096.
        seed: seed of the bank sample when the training set is larger than ``bank_size``. Defaults to 0.
        weight: ``(C, D)`` head weight, to recompute logits from features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        bank: ``(M, D)`` guided bank ``g_i``, ``M <= bank_size``.

    Example::

        det = NNGuideDetector(model=classifier).fit(train_loader)
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES, LOGITS)
    bank: Tensor

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """Five neighbours (the toy training sets are small)."""
        return {"k": 5}

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        k: int = 10,
        bank_size: int = 50_000,
        chunk_size: int = 4096,
        seed: int = 0,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if k < 1 or bank_size < 1 or chunk_size < 1:
            raise ValueError(f"k, bank_size and chunk_size must be >= 1, got {k}, {bank_size}, {chunk_size}")
        self.k = int(k)
        self.bank_size = int(bank_size)
        self.chunk_size = int(chunk_size)
        self.seed = int(seed)
        self.register_buffer("bank", torch.empty(0, 0))
        self.reset_fit()

    def reset_fit(self) -> None:
        """Empty the bank sample."""
        self._sampler = RowSampler(self.bank_size, self.seed)

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Offer one batch of guided rows ``g_i`` to the bank (labels are not used)."""
        f = F.normalize(flatten_features(self.get(features, FEATURES)), dim=1)
        confidence = torch.logsumexp(self.get(features, LOGITS).to(f), dim=1)
        self._sampler.update(f * confidence[:, None])

    def finalize_fit(self) -> None:
        """Store the bank."""
        bank, _ = self._sampler.sample()
        if self._sampler.seen > self.bank_size:
            logger.info(
                "NNGuide bank holds a uniform sample of %d of %d training features", bank.shape[0], self._sampler.seen
            )
        if bank.shape[0] < self.k:
            logger.warning(
                "NNGuide: k=%d exceeds the %d training features; using k=%d", self.k, bank.shape[0], bank.shape[0]
            )
        self.bank = bank.float().contiguous().to(self.device)
        self.reset_fit()

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D), "logits": (B, C)}``: ``-G(x) * logsumexp(logits)``."""
        self.check_fitted()
        f = F.normalize(flatten_features(self.get(features, FEATURES)).to(self.bank), dim=1)
        energy = torch.logsumexp(self.get(features, LOGITS).to(f), dim=1)
        return OODOutput(image_score=-mean_topk_similarity(f, self.bank, self.k, self.chunk_size) * energy)
