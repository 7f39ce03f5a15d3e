"""Spectral signatures of CNN feature maps (Karimi & Gholipour): how far an image's spectrum is from training's.

Algorithm, per hooked layer:

1. the feature map of one image, ``C`` channels x ``N`` voxels, as a ``C x N`` matrix ``F``;
2. its singular values ``sigma_1 >= ... >= sigma_C`` from the eigenvalues of the ``C x C`` Gram matrix
   ``F F^T`` (float64; ``N >> C`` for every layer of a segmentation network, so this is much cheaper than an SVD
   of ``F``). Eigenvalues are clipped at 0, and singular values below ``eps * sigma_1`` (zeros of a
   rank-deficient map, ``N < C`` or dead channels, and the round-off of the squared Gram spectrum, which float64
   resolves down to about ``1e-8 sigma_1``) are raised to that floor before the log;
3. the **signature** ``s = log sigma / ||log sigma||_2``, the log of the singular-value *vector* (MedicOOD wraps
   it in ``torch.diag`` first, so the off-diagonal zeros of a ``C x C`` matrix become ``log(1e-10)`` entries that
   dominate the norm: a bug this file does not copy);
4. fit: the signatures of the training images are kept (at most ``max_signatures`` per layer; beyond that a
   seeded uniform sample, bottom-k on hashed row indices as :class:`~medood.detectors._stats.RowSampler`, so the
   sample does not depend on the batching and is the same rows for every layer);
5. score: the distance to the training signatures: ``"min"`` (the paper's ``min_i ||s - s_i||``), ``"kth"``
   (distance to the ``k``-th nearest, more robust to a stray training image) or ``"mean_signature"``
   (``||s - mean_i s_i||``). Several layers are combined by
   :meth:`~medood.detectors.base_featuremap.FeatureMapDetector.combine` (mean, or per-layer normalised).

Options (off by default, the paper's settings): ``n_singular`` keeps only the largest singular values,
``normalization`` ``"ratio"`` (``log(sigma / sigma_1)``) or ``"none"`` (``log sigma``) instead of the unit norm.
Fit ``labels`` (a domain index per image, e.g. brain / pathology of a multi-task host) are stored with the
signatures (``signature_domains``): :meth:`SpectralDetector.nearest_domain` names the domain an image is nearest to.

Works on 2D and 3D feature maps alike (the spatial axes are flattened). Layers default to the two deepest encoder
stages of the host (the bottleneck and the level above it).

Score: higher = more OOD (a distance).

References:
    Karimi & Gholipour, "Improving Calibration and Out-of-Distribution Detection in Deep Models for Medical
    Image Segmentation", IEEE Trans. Artificial Intelligence 4(2), 2023, https://arxiv.org/abs/2004.06569
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medood.detectors._stats import RowSampler
from medood.detectors.base_featuremap import FeatureMapDetector
from medood.detectors.knn import kth_nn_distance
from medood.detectors.registry import register_detector

__all__ = ["DISTANCES", "NORMALIZATIONS", "SpectralDetector", "signature_of", "singular_values", "spectral_signature"]

logger = logging.getLogger(__name__)

#: Distances of a signature to the training signatures.
DISTANCES = ("min", "kth", "mean_signature")
#: How the logged singular values become a signature (:func:`signature_of`).
NORMALIZATIONS = ("l2", "ratio", "none")


def singular_values(features: Tensor, eps: float = 1e-6) -> Tensor:
    """Descending singular values of feature maps ``(B, C, *S)`` -> ``(B, C)`` float64, floored at ``eps * sigma_1``.

    From the eigenvalues of the ``C x C`` Gram matrix (the ``N x N`` one when ``N < C``); an all-zero map gives ones
    (``log 1 = 0``: the zero signature).
    """
    if features.ndim < 3:
        raise ValueError(f"feature maps must be (B, C, *spatial), got shape {tuple(features.shape)}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    f = features.detach().reshape(features.shape[0], features.shape[1], -1).to(torch.float64)
    if f.shape[2] < f.shape[1]:  # N < C (a classifier's deep layer): the N x N Gram has the same non-zero spectrum
        eig = torch.linalg.eigvalsh(f.transpose(1, 2) @ f)
        eig = torch.cat([eig.new_zeros(f.shape[0], f.shape[1] - f.shape[2]), eig], dim=1)  # the C - N exact zeros
    else:
        eig = torch.linalg.eigvalsh(f @ f.transpose(1, 2))
    sigma = eig.flip(-1).clamp_min(0.0).sqrt()  # descending singular values of F
    top = sigma[:, :1]
    floor = torch.where(top > 0, eps * top, torch.ones_like(top))  # all-zero maps: log 1 = 0 everywhere
    return torch.maximum(sigma, floor)


def signature_of(sigma: Tensor, n_singular: int | None = None, normalization: str = "l2") -> Tensor:
    """Signatures of descending singular values ``(B, C)``: the ``n_singular`` largest, logged, normalised.

    Args:
        sigma: output of :func:`singular_values`.
        n_singular: how many of the largest singular values are kept (``None`` = all).
        normalization: ``"l2"`` (the paper's ``log sigma / ||log sigma||_2``), ``"ratio"`` (``log(sigma /
            sigma_1)``: scale-free, not unit norm) or ``"none"`` (``log sigma``).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if n_singular is not None:
        sigma = sigma[:, : max(1, int(n_singular))]
    log_sigma = torch.log(sigma)
    if normalization == "ratio":
        return log_sigma - log_sigma[:, :1]
    if normalization == "none":
        return log_sigma
    norm = log_sigma.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, log_sigma / norm.clamp_min(torch.finfo(torch.float64).tiny), log_sigma)


def spectral_signature(
    features: Tensor, eps: float = 1e-6, n_singular: int | None = None, normalization: str = "l2"
) -> Tensor:
    """Spectral signatures ``log sigma / ||log sigma||_2`` of feature maps ``(B, C, *S)`` -> ``(B, C)`` float64.

    Args:
        features: one ``C x N`` matrix per image (``N`` = the flattened spatial axes).
        eps: relative floor of the singular values (``sigma_i >= eps * sigma_1``). Defaults to 1e-6.
        n_singular: keep only the largest ``n_singular`` singular values. Defaults to all.
        normalization: see :func:`signature_of`. Defaults to ``"l2"`` (the paper's).

    Returns:
        Signatures with the singular values in descending order (unit norm with ``"l2"``); an all-zero feature
        map (no spectrum) gives the zero vector.
    """
    return signature_of(singular_values(features, eps), n_singular, normalization)


@register_detector("spectral")
class SpectralDetector(FeatureMapDetector):
    """Distance of an image's feature-map spectral signatures to those of the training images.

    Args:
        model: the host network (e.g. a MONAI ``UNet`` / ``DynUNet``); optional with ``fit_features`` /
            ``score_features`` (then give ``layers``).
        layers: module names to hook (``None`` = the ``n_stages`` deepest encoder stages).
        n_stages: encoder stages taken when ``layers`` is ``None``. Defaults to 2.
        combine: ``"mean"`` or ``"normalized"`` per-layer distances. Defaults to ``"mean"``.
        distance: ``"min"``, ``"kth"`` or ``"mean_signature"``. Defaults to ``"min"`` (the paper's).
        k: neighbour rank of ``"kth"``. Defaults to 5.
        max_signatures: the most training signatures kept per layer. Defaults to 10 000.
        seed: seed of the sample when there are more training images. Defaults to 0.
        eps: relative singular-value floor. Defaults to 1e-6.
        n_singular: keep only the largest ``n_singular`` singular values of each layer (``None`` = all, the
            paper's).
        normalization: ``"l2"`` (the paper's), ``"ratio"`` or ``"none"`` (:func:`signature_of`).

    Attributes:
        signatures_<i>: ``(M, C_i)`` float64 training signatures of layer ``i``.
        signature_domains: ``(M,)`` domain index of each training signature (the ``labels`` given to the fit,
            e.g. 0 brain / 1 pathology for a multi-task host; empty when none were given):
            :meth:`nearest_domain` says which domain's signature an image is nearest to.

    Example::

        det = SpectralDetector(model=unet).fit(train_loader)  # batches {"image": (B, 1, H, W, D)}
        scores = det.score(volumes).image_score  # (B,), higher = more OOD
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        layers: str | Sequence[str] | None = None,
        n_stages: int | None = None,
        combine: str = "mean",
        distance: str = "min",
        k: int = 5,
        max_signatures: int = 10_000,
        seed: int = 0,
        eps: float = 1e-6,
        n_singular: int | None = None,
        normalization: str = "l2",
    ) -> None:
        super().__init__(model=model, layers=layers, n_stages=n_stages, combine=combine)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if k < 1 or max_signatures < 1:
            raise ValueError(f"k and max_signatures must be >= 1, got {k} and {max_signatures}")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if n_singular is not None and n_singular < 1:
            raise ValueError(f"n_singular must be >= 1 or None, got {n_singular}")
        self.distance, self.k, self.max_signatures, self.seed, self.eps = distance, int(k), max_signatures, seed, eps
        self.n_singular, self.normalization = n_singular, normalization
        for i in range(len(self.layers)):
            self.register_buffer(f"signatures_{i}", torch.empty(0, 0, dtype=torch.float64))
        self.register_buffer("signature_domains", torch.empty(0, dtype=torch.long))
        self.reset_fit()

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """The default (two deepest stages of the toy classifier, minimum distance)."""
        return {}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # detectors saved before the domain labels existed: no labels
        state_dict.setdefault(prefix + "signature_domains", torch.empty(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def banks(self) -> list[Tensor]:
        """The stored training signatures of each layer."""
        return [getattr(self, f"signatures_{i}") for i in range(len(self.layers))]

    def signatures(self, features: Mapping[str, Any]) -> list[Tensor]:
        """``(B, C_i)`` float64 signatures of every layer."""
        return [self.signature_from(singular_values(f, self.eps)) for f in self.layer_features(features)]

    def signature_from(self, sigma: Tensor) -> Tensor:
        """This detector's signature (``n_singular``, ``normalization``) of descending singular values ``(B, C)``."""
        return signature_of(sigma, self.n_singular, self.normalization)

    # ------------------------------------------------------------------ fit
    def reset_fit(self) -> None:
        """Empty the signature samples (one per layer, same seed: the same rows are kept for every layer)."""
        self._samplers = [RowSampler(self.max_signatures, self.seed) for _ in self.layers]

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Add the signatures of one batch of ``{layer: (B, C, *S)}``; ``labels``: ``(B,)`` domain indices or None."""
        self.partial_fit_signatures(self.signatures(features), labels)

    def partial_fit_signatures(self, signatures: Sequence[Tensor], labels: Tensor | None = None) -> None:
        """Add one batch of per-layer signatures ``[(B, C_i)]`` (and their domain indices ``(B,)``, optional)."""
        for sampler, sig in zip(self._samplers, signatures):
            sampler.update(sig, labels)

    def finalize_fit(self) -> None:
        """Store the signatures and each layer's leave-one-out training distances (for ``"normalized"``)."""
        seen = self._samplers[0].seen
        for i, sampler in enumerate(self._samplers):
            bank, domains = sampler.sample()
            setattr(self, f"signatures_{i}", bank.to(torch.float64).to(self.layer_mean.device))
        empty = torch.empty(0, dtype=torch.long)
        self.signature_domains = (empty if domains is None else domains.long()).to(self.layer_mean.device)
        kept = self.banks[0].shape[0]
        if seen > kept:
            logger.info("spectral: kept a seeded uniform sample of %d of %d training signatures", kept, seen)
        if self.distance == "kth" and kept <= self.k:
            logger.warning("spectral: k=%d needs more than %d training images; using the farthest", self.k, kept)
        train = [self._distance(bank, bank, leave_one_out=True) for bank in self.banks]
        self.set_layer_statistics(torch.stack(train, dim=1))
        self.reset_fit()

    # ------------------------------------------------------------------ score
    def _distance(self, sig: Tensor, bank: Tensor, leave_one_out: bool = False) -> Tensor:
        if sig.shape[1] != bank.shape[1]:
            raise ValueError(f"signatures have {sig.shape[1]} channels but the training ones {bank.shape[1]}")
        if self.distance == "mean_signature":
            return (sig - bank.mean(0)).norm(dim=1)
        rank = 1 if self.distance == "min" else self.k
        if leave_one_out:  # each training signature is its own nearest neighbour (distance 0): skip it
            if bank.shape[0] < 2:
                return torch.zeros(sig.shape[0], dtype=sig.dtype, device=sig.device)
            rank += 1
        return kth_nn_distance(sig, bank, min(rank, bank.shape[0]))

    def score_layers(self, features: Mapping[str, Any]) -> Tensor:
        """``(B, L)`` distances of each layer's signature to that layer's training signatures."""
        return self.score_signatures(self.signatures(features))

    def score_signatures(self, signatures: Sequence[Tensor]) -> Tensor:
        """``(B, L)`` distances of per-layer signatures ``[(B, C_i)]`` to the training signatures."""
        return torch.stack([self._distance(s.to(b.device), b) for s, b in zip(signatures, self.banks)], dim=1)

    def nearest_domain(self, features: Mapping[str, Any]) -> Tensor:
        """``(B,)`` domain index of the training signature nearest to each image (mean distance over the layers).

        Raises:
            ValueError: the detector was fitted without domain labels.
        """
        self.check_fitted()
        if self.signature_domains.numel() == 0:
            raise ValueError("spectral: fitted without domain labels; give labels to the fit to use nearest_domain")
        sigs = self.signatures(features)
        d = torch.stack([torch.cdist(s.to(b.device), b) for s, b in zip(sigs, self.banks)]).mean(0)
        return self.signature_domains[d.argmin(dim=1)]
