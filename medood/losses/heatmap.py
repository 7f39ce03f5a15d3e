"""Stage loss of the heatmap decoder (Hornauer & Belagiannis, WACV 2023): a weighted residual reconstruction.

For an input ``x`` with target ``t`` (``t = x`` for in-distribution images, the nearest same-class ID training
image for auxiliary OOD ones) the decoder's residual ``h`` should make ``x + h`` equal ``t``:

    loss = mean over the batch of  sum over channels and voxels of  (1 + w |t|) (x + h(x) - t)^2

with ``w = 5`` in the official code (``ase_loss_weighted``). The classifier that feeds the decoder is frozen: its
features are computed without gradients by ``encode``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["HeatmapLoss", "weighted_residual_loss"]


def weighted_residual_loss(x: Tensor, h: Tensor, t: Tensor, weight: float = 5.0) -> Tensor:
    """``mean_b sum (1 + weight |t|) (x + h - t)^2`` over every non-batch axis."""
    if x.shape != h.shape or x.shape != t.shape:
        shapes = f"{tuple(x.shape)}, {tuple(h.shape)}, {tuple(t.shape)}"
        raise ValueError(f"image, residual and target shapes differ: {shapes}")
    per_item = ((1.0 + weight * t.abs()) * (x + h - t) ** 2).flatten(1).sum(1)
    return per_item.mean()


class HeatmapLoss(nn.Module):
    """``loss(decoder, images, targets) -> (loss, {"pred": residual})`` for :class:`~medood.engines.StageTrainer`.

    Args:
        encode: ``images -> (decoder input features, predicted class)``, the frozen classifier (run without
            gradients), e.g. :meth:`medood.detectors.heatmap.HeatmapDetector.encode`.
        weight: ``w`` of the ``1 + w |t|`` weighting. Defaults to 5.0 (the official code).
    """

    def __init__(self, encode: Callable[[Tensor], tuple[Tensor, Tensor]], weight: float = 5.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.encode, self.weight = encode, float(weight)

    def forward(self, network: nn.Module, inputs: Tensor, targets: Tensor | None) -> tuple[Tensor, dict]:
        """Residual ``network(z, y)`` of the frozen classifier's features, compared with the targets."""
        if targets is None:
            raise ValueError("the heatmap stage needs a target image per input (batch key 'target')")
        with torch.no_grad():
            z, y = self.encode(inputs)
        h = network(z, y)
        return weighted_residual_loss(inputs, h, targets, self.weight), {"pred": h.detach()}
