"""ReAct of Sun et al.: clip the penultimate activations at a threshold, then take the energy.

Algorithm: ``f_bar = min(f, c)`` element-wise; logits recomputed through the linear head,
``z = W f_bar + b``; energy ``-logsumexp(z)`` (``T = 1``).

Two ways to set ``c``:

* ``mode="percentile"`` (the paper): ``c`` = the ``percentile``-th (default 90th) percentile of all training
  activations (every entry of every training feature vector; numpy's linear interpolation, as the official
  code). The fit streams: it keeps a seeded uniform sample of training feature *rows* holding at most
  ``max_fit_values`` activations (default 2 000 000, i.e. ``max_fit_values // D`` rows); the percentile is exact
  whenever the training set fits in that sample;
* ``mode="constant"`` (the NERO code, which uses 0.9 for ResNet-18 and 0.99 otherwise): ``c = clip``, given by
  the user; no fit is needed (the detector is fitted on construction).

Score: higher = more OOD: the detector returns ``-logsumexp(W min(f, c) + b)``.

References:
    Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021,
    https://arxiv.org/abs/2111.12797 (code: https://github.com/deeplearning-wisc/react)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from medood.detectors._stats import RowSampler
from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, ClassifierDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["ReActDetector"]


@register_detector("react")
class ReActDetector(ClassifierDetector):
    """Energy of the logits recomputed from clipped penultimate activations.

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        percentile: percentile of the training activations used as the clip (``mode="percentile"``).
            Defaults to 90.
        clip: a constant clip value; giving it selects ``mode="constant"`` (no fit needed). Defaults to
            ``None``.
        max_fit_values: bound on the training activations kept to estimate the percentile. Defaults to 2e6.
        seed: seed of that sample. Defaults to 0.
        weight: ``(C, D)`` head weight, when no model is given.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        mode: ``"percentile"`` or ``"constant"``.
        clip_value: scalar buffer, the activation threshold ``c``.

    Example::

        det = ReActDetector(model=classifier).fit(train_loader)       # 90th-percentile clip
        det = ReActDetector(model=classifier, clip=0.9)                # NERO's constant clip, no fit
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES,)
    needs_head = True
    head_weight: Tensor
    head_bias: Tensor
    clip_value: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        percentile: float = 90.0,
        clip: float | None = None,
        max_fit_values: int = 2_000_000,
        seed: int = 0,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        if max_fit_values < 1:
            raise ValueError(f"max_fit_values must be >= 1, got {max_fit_values}")
        self.mode = "percentile" if clip is None else "constant"
        self.percentile = float(percentile)
        self.max_fit_values = int(max_fit_values)
        self.seed = int(seed)
        self.register_buffer("clip_value", torch.tensor(0.0 if clip is None else float(clip)))
        if clip is not None:
            self.mark_fitted(True)
        self.reset_fit()

    def reset_fit(self) -> None:
        """Empty the activation sample."""
        self._sampler: RowSampler | None = None

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Offer one batch of ``{"features": (B, D)}`` to the activation sample (no-op in constant mode)."""
        if self.mode == "constant":
            return
        f = flatten_features(self.get(features, FEATURES))
        if self._sampler is None:
            self._sampler = RowSampler(max(1, self.max_fit_values // f.shape[1]), self.seed)
        self._sampler.update(f.float())

    def finalize_fit(self) -> None:
        """The clip value: the percentile of the sampled training activations (unchanged in constant mode)."""
        if self.mode == "constant":
            return
        if self._sampler is None:
            raise ValueError("ReActDetector.finalize_fit: no training features were seen")
        rows, _ = self._sampler.sample()
        value = np.percentile(rows.double().cpu().numpy().reshape(-1), self.percentile)
        self.clip_value = torch.tensor(float(value), dtype=torch.float32, device=self.device)
        self.reset_fit()

    def clipped_logits(self, features: Tensor) -> Tensor:
        """Logits ``W min(f, c) + b`` of features ``(B, D)``."""
        return self.head_logits(features.clamp(max=float(self.clip_value)))

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D)}``: ``-logsumexp`` of the clipped logits."""
        self.check_fitted()
        f = flatten_features(self.get(features, FEATURES)).to(self.head_weight)
        return OODOutput(image_score=-torch.logsumexp(self.clipped_logits(f), dim=1))
