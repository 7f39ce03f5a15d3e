"""Monte-Carlo dropout: the variance of a segmentation network's softmax over stochastic forward passes.

The second prediction-uncertainty baseline of Karimi & Gholipour's comparison (Gal & Ghahramani's MC dropout):

1. ``n_samples`` forward passes with dropout active (everything else in eval mode): the network's own dropout
   modules, or, for a network without dropout, dropout of rate ``p`` applied at test time to the input of
   ``dropout_layer`` (default: the last convolution / linear layer, i.e. the head);
2. voxel-wise predictive variance ``sum_k Var_t[p_k]`` of the softmax probabilities over the passes;
3. averaged over the whole image or its predicted foreground (``argmax`` of the mean probabilities
   ``!= background``; no foreground voxel: the whole image).

The passes are seeded (``seed``, on a forked RNG) **per case**: each image of a batch is passed on its own with the
same masks, so a case gets the same score alone, in any batch and at any batch position. The cost is ``n_samples``
forward passes per case, so it cannot share a bundle's single inference pass. A network without an active dropout
module (none, or every rate 0) gets test-time dropout on its head's input, with a warning: that samples only the
head, not the model's posterior (``dropout_source`` says which).

The score is a region *mean*: with ``region="foreground"`` a larger predicted foreground of confident voxels lowers
it. On the spectral bundle's host this ranks thick-slice (``anisotropic``) volumes and pathology ``ultrasound``
below every ID case (AUROC 0.000; ``scripts/diagnose_mc_dropout.py``, figures in that bundle's README): a property
of the score on that host, not of the ranking code.

Score: higher = more OOD (more uncertain).

References:
    Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016, https://arxiv.org/abs/1506.02142;
    Karimi & Gholipour, IEEE Trans. Artificial Intelligence 4(2), 2023, https://arxiv.org/abs/2004.06569
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medood.detectors.base import OODDetector, OODOutput
from medood.detectors.base_featuremap import region_mean
from medood.detectors.registry import register_detector
from medood.utils.batch import as_plain_tensor

__all__ = ["MCDropoutDetector"]

logger = logging.getLogger(__name__)

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_HEADS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
VARIANCE, MEAN_PROBS = "mc_variance", "mc_mean_probs"


@register_detector("mc_dropout")
class MCDropoutDetector(OODDetector):
    """Mean MC-dropout predictive variance of a segmentation network (or classifier).

    Args:
        model: the host network (``(B, K, *S)`` or ``(B, K)`` logits).
        n_samples: stochastic passes. Defaults to 10.
        p: rate of the test-time dropout used when the network has no dropout module (or ``dropout_layer`` is
            given). Defaults to 0.1.
        dropout_layer: apply test-time dropout to this module's input instead of using the network's dropout.
            Defaults to ``None``.
        region: ``"volume"`` or ``"foreground"``. Defaults to ``"foreground"``.
        background: index of the background class. Defaults to 0.
        seed: seed of the dropout masks. Defaults to 0.
    """

    requires_fit = False
    needs_model = True
    model: nn.Module | None

    def __init__(
        self,
        model: nn.Module | None = None,
        n_samples: int = 10,
        p: float = 0.1,
        dropout_layer: str | None = None,
        region: str = "foreground",
        background: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n_samples < 2 or not 0.0 < p < 1.0:
            raise ValueError(f"need n_samples >= 2 and 0 < p < 1, got {n_samples} and {p}")
        region_mean(torch.zeros(1), torch.zeros(1, 1), region)  # validate early
        object.__setattr__(self, "model", model)
        self.n_samples, self.p, self.region, self.background, self.seed = n_samples, p, region, background, seed
        self._own = [] if model is None else [m for m in model.modules() if isinstance(m, _DROPOUT) and m.p > 0]
        self._target: nn.Module | None = None
        if model is not None and (dropout_layer is not None or not self._own):
            modules = dict(model.named_modules())
            if dropout_layer is None:
                dropout_layer = [n for n, m in modules.items() if isinstance(m, _HEADS)][-1]
            if dropout_layer not in modules:
                raise ValueError(f"model has no module named {dropout_layer!r}")
            self._target, self._own = modules[dropout_layer], []
            if not any(isinstance(m, _DROPOUT) and m.p > 0 for m in model.modules()):
                logger.warning(
                    "MC dropout: %s has no active dropout module; sampling test-time dropout (p=%g) on the input of "
                    "%r only (the head, not the model's posterior)", type(model).__name__, p, dropout_layer,
                )  # fmt: skip
        self.dropout_layer = dropout_layer
        #: ``"model"`` (the network's own dropout modules) or ``"test_time:<layer>"`` (a pre-hook on that layer)
        self.dropout_source = "model" if self._own or model is None else f"test_time:{dropout_layer}"

    @contextlib.contextmanager
    def _stochastic(self) -> Iterator[None]:
        """Dropout on (own modules in train mode, or a pre-hook on the target), on a forked, seeded RNG."""
        model = self.model
        assert model is not None
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        devices = [device] if device.type == "cuda" else []
        handle = None
        modes = [m.training for m in self._own]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            try:
                for m in self._own:
                    m.train()
                if self._target is not None:
                    handle = self._target.register_forward_pre_hook(
                        lambda _m, args: (F.dropout(args[0], self.p, training=True), *args[1:])
                    )
                yield
            finally:
                for m, mode in zip(self._own, modes):
                    m.train(mode)
                if handle is not None:
                    handle.remove()

    def extract_features(self, x: Tensor) -> dict[str, Tensor]:
        """``n_samples`` stochastic passes per case: ``{"mc_variance": (B, *S), "mc_mean_probs": (B, K, *S)}``.

        Each case is passed on its own with the same seeded masks (its score does not depend on the batch).
        """
        if self.model is None:
            raise ValueError("MCDropoutDetector needs the model: it runs its own stochastic passes")
        cases = [self._passes(self.model, xi) for xi in x.split(1)]
        return {key: torch.cat([c[key] for c in cases]) for key in (VARIANCE, MEAN_PROBS)}

    def _passes(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        with torch.no_grad(), self._stochastic():
            mean = torch.softmax(as_plain_tensor(model(x)).float(), dim=1)
            m2 = torch.zeros_like(mean)
            for t in range(2, self.n_samples + 1):
                p = torch.softmax(as_plain_tensor(model(x)).float(), dim=1)
                delta = p - mean  # Welford's running mean and sum of squares
                mean = mean + delta / t
                m2 = m2 + delta * (p - mean)
        return {VARIANCE: (m2 / (self.n_samples - 1)).sum(dim=1), MEAN_PROBS: mean}

    def score_features(self, features: Mapping[str, Any]) -> OODOutput:
        """Score ``{"mc_variance", "mc_mean_probs"}``: the region mean of the predictive variance."""
        return OODOutput(region_mean(features[VARIANCE], features[MEAN_PROBS], self.region, self.background))

    def _check_input(self, x: Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"expected a batch (B, ...), got shape {tuple(x.shape)}")
