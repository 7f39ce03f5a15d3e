"""NERO of Chhetri et al.: OOD detection from neuron-level relevance at a classifier's last linear layer.

Algorithm (as the official NERO code, ``ood/run_nero.py``):

1. relevance ``R(x) in R^{D+1}``: closed-form LRP-0 at the last linear layer with the softmax probabilities of
   all classes as output relevance (:func:`medood.relevance.last_layer_relevance`); the last entry is the bias
   relevance ``R_b``;
2. fit on the ID training set (ground-truth labels): PCA of ``R[:D]`` to ``n = int(2D/3)`` components, one
   centroid per class ``mu_c`` = the class mean of the projected relevances (the code's choice; optionally
   ``k_means_per_class = K > 1`` centroids per class from a seeded k-means, see below);
3. bias scale ``s = mean_train[min_c ||R - mu~_c||_1] / mean_train |R_b|`` with ``mu~_c`` the class means of
   the raw ``(D+1)``-dim relevance;
4. ``d_rel(x) = min_c ||PCA(R[:D]) - mu_c||_1``; feature-norm term ``g(x) = ||a_K||_1 / ||a||_1`` over the
   ``k = 175`` neurons with the *smallest* relevance (``k`` clipped to ``D``);
5. ``NERO(x) = (d_rel(x) + s |R_b(x)|) * g(x)``.

``k`` and small heads: the code uses ``k = 175`` for ResNet-18 (``D = 512``) and DeiT-S (``D = 384``) alike and
takes ``argsort(R)[:, :k]``, which keeps every neuron when ``k >= D``. Then ``g(x) = 1`` for every input and the
feature-norm term does nothing, e.g. for a ``D = 128`` head with the default ``k``;
:meth:`NERODetector.neurons_kept` (the one place ``k`` is resolved) clamps it, logs a warning at fit and at a loaded
detector's first score, and records ``k_effective`` / ``norm_term_active``. ``k`` may instead be a fraction of
``D`` (a float in ``(0, 1)``: ``k = 175 / 512`` keeps ResNet-18's ratio, 44 of 128). That fraction is an
extrapolation: the paper does not scale ``k`` with ``D``.

The bias term: ``R_b = sum_c p_c b_c / z_c``, which is about ``b_yhat / z_yhat`` for a confident prediction. It
shrinks as the top logit grows and depends on which class is predicted. ``s`` makes its training mean equal to
the mean L1 class distance in the *raw* ``(D+1)`` space, which is 2-3.5 times the PCA-space ``d_rel`` on the demo
tasks, so ``s |R_b|`` carries most of the score. For a head trained from scratch with biases of about 0
(``|b| <= 0.014`` on the demo) it mostly measures ``|b_yhat| / max logit``. On the demo endoscopy task it is about
80 % of the ID score, and it ranks the over-confident far-OOD images, which have larger logits, *below* ID (see
the NERO bundle's README).

Streaming fit (memory independent of ``N``): the PCA comes from the exact running mean and covariance of
``R[:D]`` (float64, ``O(D^2)``; the L1 distance between projections does not depend on the PCA centring or on
component signs, so it matches sklearn's PCA); the class means from per-class running sums (``O(C D)``) and
``mean |R_b|`` from a running sum, all exact. The numerator of ``s`` needs the class means first, i.e. a
second look at the data: it is averaged over a bounded seeded uniform sample of training relevances
(``fit_sample_size`` rows, default 20 000; exact whenever ``N <= fit_sample_size``). With ``K > 1`` the
per-class k-means (k-means++ init, Lloyd, Euclidean, in PCA space) runs on that same sample's rows of each
class; the bias scale always uses one raw mean per class, as the code.

Score: higher = more OOD: the detector returns ``NERO(x)``; ``score_features`` also returns the neuron-level
explanation ``extras["relevance"]`` ``(B, D+1)``.

References:
    Chhetri, Korhonen, Gyawali & Bhattarai, "NERO: Explainable Out-of-Distribution Detection with
    Neuron-level Relevance", MICCAI 2025, https://arxiv.org/abs/2506.15404
    (code: https://github.com/bhattarailab/NERO)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from medood.detectors._stats import ClassSums, RowSampler, RunningMoments, class_labels, kmeans, top_eigh
from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features
from medood.relevance.lrp import last_layer_relevance

__all__ = ["NERODetector"]

logger = logging.getLogger(__name__)


@register_detector("nero")
class NERODetector(ClassifierDetector):
    """Relevance distance to class centroids plus scaled bias relevance, weighted by a feature-norm ratio.

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        n_components: PCA components. Defaults to ``int(2 D / 3)`` (the code's choice).
        k: least-relevant neurons in the feature-norm term: an ``int >= 1`` is a count (clipped to ``D``; the
            term is identically 1 when ``k >= D``), a ``float`` in ``(0, 1)`` a fraction of ``D``
            (``max(1, round(k D))``, e.g. ``175 / 512``). Defaults to 175 (the code's value).
        k_means_per_class: centroids per class; 1 = the class mean (the code). Defaults to 1.
        fit_sample_size: training relevances kept (seeded uniform sample) for the bias scale and k-means.
            Defaults to 20 000.
        eps: LRP stabiliser (see :func:`~medood.relevance.last_layer_relevance`). Defaults to 1e-6.
        use_predicted_labels: fit on ``argmax(logits)`` when a batch has no labels (otherwise an error).
            Defaults to ``False``.
        seed: seed of the sample and of k-means. Defaults to 0.
        weight: ``(C, D)`` head weight, when no model is given.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        pca_mean: ``(D,)`` mean training relevance.
        pca_components: ``(D, n)`` principal directions.
        centroids: ``(M, n)`` class centroids in PCA space (``M = C * K`` at most).
        bias_scale: scalar ``s``.

    Example::

        det = NERODetector(model=classifier).fit(train_loader)  # batches {"image", "label"}
        out = det.score(images)  # out.image_score (B,), out.extras["relevance"] (B, D + 1)
    """

    required_features = (FEATURES, LOGITS)
    needs_head = True
    head_weight: Tensor
    head_bias: Tensor
    pca_mean: Tensor
    pca_components: Tensor
    centroids: Tensor
    bias_scale: Tensor

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """Six principal components (the toy relevance vectors are 16-dimensional)."""
        return {"k": 6}

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        n_components: int | None = None,
        k: int | float = 175,
        k_means_per_class: int = 1,
        fit_sample_size: int = 20_000,
        eps: float = 1e-6,
        use_predicted_labels: bool = False,
        seed: int = 0,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        k_ok = (0 < k < 1) if isinstance(k, float) else (k >= 1 and not isinstance(k, bool))
        if (n_components is not None and n_components < 1) or not k_ok or k_means_per_class < 1 or eps < 0:
            raise ValueError(
                f"need n_components >= 1, k an int >= 1 or a float in (0, 1), k_means_per_class >= 1 and eps >= 0; "
                f"got {n_components}, {k!r}, {k_means_per_class}, {eps}"
            )
        self.n_components = n_components
        self.k: int | float = k if isinstance(k, float) else int(k)
        self.k_means_per_class = int(k_means_per_class)
        self.fit_sample_size = int(fit_sample_size)
        self.eps = float(eps)
        self.use_predicted_labels = bool(use_predicted_labels)
        self.seed = int(seed)
        #: ``k`` as used for the last ``D`` seen (``None`` before fit / score) and whether ``g(x)`` can differ from 1
        self.k_effective: int | None = None
        self.norm_term_active: bool | None = None
        self._warned_d: int | None = None
        self.register_buffer("pca_mean", torch.empty(0))
        self.register_buffer("pca_components", torch.empty(0, 0))
        self.register_buffer("centroids", torch.empty(0, 0))
        self.register_buffer("bias_scale", torch.zeros(()))
        self.reset_fit()

    def neurons_kept(self, d: int) -> int:
        """The number of least-relevant neurons ``g(x)`` sums over for ``D = d`` features (``k`` resolved).

        The one place ``k`` is resolved: a ``k >= D`` is clamped to ``D`` (then ``g(x) = 1``, the official code's
        behaviour) with a warning, once per ``D``, at fit **and** when a loaded detector first scores. The result is
        recorded in :attr:`k_effective` and :attr:`norm_term_active`.
        """
        k = max(1, round(self.k * d)) if isinstance(self.k, float) else self.k
        kept = min(k, d)
        self.k_effective, self.norm_term_active = kept, kept < d
        if kept >= d and self._warned_d != d:
            self._warned_d = d
            logger.warning(
                "NERO: k = %s >= D = %d, clamped to k_effective = %d: the feature-norm term g(x) = 1 for every "
                "input (as in the official code); pass a fraction such as k=175/512 to keep the paper's ResNet-18 "
                "ratio", self.k, d, kept,
            )  # fmt: skip
        return kept

    # ------------------------------------------------------------------ relevance
    def relevance(self, features: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(a (B, D), R (B, D + 1))``: penultimate features and their last-layer relevance."""
        a = flatten_features(self.get(features, FEATURES)).to(self.head_weight)
        logits = self.get(features, LOGITS).to(a)
        return a, last_layer_relevance(a, self.head_weight, self.head_bias, logits=logits, eps=self.eps)

    # ------------------------------------------------------------------ fitting
    def reset_fit(self) -> None:
        """Clear the running statistics and the relevance sample."""
        self._moments = RunningMoments()
        self._classes = ClassSums()
        self._bias_abs_sum = 0.0
        self._sampler = RowSampler(self.fit_sample_size, self.seed)

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Accumulate one batch of ``{"features": (B, D), "logits": (B, C)}`` with class labels ``(B,)``."""
        _, rel = self.relevance(features)
        logits = self.get(features, LOGITS) if labels is None else None
        y = class_labels(logits, labels, type(self).__name__, self.use_predicted_labels).to(rel.device)
        d = rel.shape[1] - 1
        self._moments.update(rel[:, :d])
        self._classes.update(rel, y)
        self._bias_abs_sum += float(rel[:, d].abs().double().sum())
        self._sampler.update(rel, y)

    def finalize_fit(self) -> None:
        """PCA, class centroids and the bias scale."""
        m = self._moments
        if m.mean is None:
            raise ValueError("NERODetector.finalize_fit: no training features were seen")
        d = m.mean.shape[0]
        n_comp = max(1, min(int(2 * d / 3) if self.n_components is None else self.n_components, d))
        self.neurons_kept(d)  # resolves k; warns and records a clamp
        if m.n < n_comp:
            logger.warning(
                "NERO: %d training samples for %d PCA components; trailing components are arbitrary", m.n, n_comp
            )
        _, vecs = top_eigh(m.covariance())
        components = vecs[:, :n_comp]
        raw_means, present = self._classes.means()  # (C', D + 1), float64
        sample, sample_labels = self._sampler.sample()
        sample = sample.double()
        if self.k_means_per_class == 1:
            centroids = (raw_means[:, :d] - m.mean) @ components
        else:
            assert sample_labels is not None
            centroids = torch.cat(
                [
                    kmeans((sample[sample_labels == c, :d] - m.mean) @ components, self.k_means_per_class, self.seed)
                    for c in present.tolist()
                    if bool((sample_labels == c).any())
                ]
            )
        numerator = torch.cdist(sample, raw_means.to(sample), p=1).amin(dim=1).mean()
        mean_bias = self._bias_abs_sum / m.n
        scale = float(numerator) / mean_bias if mean_bias > 0 else 0.0
        dev = self.device
        self.pca_mean = m.mean.float().to(dev)
        self.pca_components = components.float().contiguous().to(dev)
        self.centroids = centroids.float().to(dev)
        self.bias_scale = torch.tensor(scale, dtype=torch.float32, device=dev)
        self.reset_fit()

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def feature_norm_term(a: Tensor, neuron_relevance: Tensor, k: int) -> Tensor:
        """``||a_K||_1 / ||a||_1`` over the ``k`` neurons of smallest relevance (``k`` clipped to ``D``)."""
        idx = torch.topk(neuron_relevance, min(k, neuron_relevance.shape[1]), dim=1, largest=False).indices
        num = a.abs().gather(1, idx).sum(dim=1)
        return num / a.abs().sum(dim=1).clamp_min(torch.finfo(a.dtype).tiny)

    def relevance_distance(self, neuron_relevance: Tensor) -> Tensor:
        """``min_c ||PCA(R[:D]) - mu_c||_1`` of ``R[:D] (B, D)``."""
        proj = (neuron_relevance - self.pca_mean) @ self.pca_components
        return torch.cdist(proj, self.centroids, p=1).amin(dim=1)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D), "logits": (B, C)}``; ``extras["relevance"]`` is ``R (B, D + 1)``."""
        self.check_fitted()
        a, rel = self.relevance(features)
        d = a.shape[1]
        d_rel = self.relevance_distance(rel[:, :d])
        g = self.feature_norm_term(a, rel[:, :d], self.neurons_kept(d))
        score = (d_rel + self.bias_scale * rel[:, d].abs()) * g
        return OODOutput(image_score=score, extras={"relevance": rel})
