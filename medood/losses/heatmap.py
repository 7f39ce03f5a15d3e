"""Stage loss of the heatmap decoder (Hornauer & Belagiannis, WACV 2023): a weighted residual reconstruction.

For an input ``x`` with target ``t`` (``t = x`` for in-distribution images, the nearest same-class ID training
image for auxiliary OOD ones) the decoder's residual ``h`` should make ``x + h`` equal ``t``:

    loss = mean over the batch of  sum over channels and voxels of  (1 + w |t|) (x + h(x) - t)^2

with ``w = 5`` in the official code (``ase_loss_weighted``), whose images are normalised to ``[-1, 1]``: the weight is
then largest at both intensity extremes. medood's classifiers read ``[0, 1]`` images, where the same weight grows
with brightness only; ``input_range=(0, 1)`` maps ``x`` and ``t`` linearly to ``[-1, 1]`` inside the loss (the
official weighting; ``h`` is then a residual in ``[-1, 1]`` units), without touching the classifier's input. Off by
default (the shipped decoders are trained without it). The decoder reads the frozen classifier's normalised
penultimate features and predicted class. The classifier is frozen and the training images are fixed (no
augmentation, as in the official training), so its outputs are computed once, when the targets are searched,
and travel with the batch (``"features"``, ``"pred"``) instead of being recomputed at every step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["TARGET_KEYS", "HeatmapLoss", "weighted_residual_loss"]

TARGET_KEYS = ("target", "features", "pred")


def weighted_residual_loss(
    x: Tensor, h: Tensor, t: Tensor, weight: float = 5.0, input_range: tuple[float, float] | None = None
) -> Tensor:
    """``mean_b sum (1 + weight |t|) (x + h - t)^2`` over every non-batch axis.

    Args:
        x: images.
        h: the decoder's residuals (the shape of ``x``).
        t: target images (the shape of ``x``).
        weight: ``w`` of ``1 + w |t|``. Defaults to 5.0.
        input_range: ``(lo, hi)`` of ``x`` and ``t``: both are first mapped linearly to ``[-1, 1]`` (the official
            code's image range). ``None`` (default): used as given.
    """
    if x.shape != h.shape or x.shape != t.shape:
        shapes = f"{tuple(x.shape)}, {tuple(h.shape)}, {tuple(t.shape)}"
        raise ValueError(f"image, residual and target shapes differ: {shapes}")
    if input_range is not None:
        lo, hi = input_range
        x, t = (2.0 * (v - lo) / (hi - lo) - 1.0 for v in (x, t))
    per_item = ((1.0 + weight * t.abs()) * (x + h - t) ** 2).flatten(1).sum(1)
    return per_item.mean()


class HeatmapLoss(nn.Module):
    """``loss(decoder, images, targets) -> (loss, {"pred": residual})`` for :class:`~medood.engines.StageTrainer`.

    ``targets`` is ``{"target": (B, C, *S) target images, "features": (B, D) normalised classifier features,
    "pred": (B,) predicted classes}`` (batch keys of the stage, :data:`TARGET_KEYS`).

    Args:
        weight: ``w`` of the ``1 + w |t|`` weighting. Defaults to 5.0 (the official code).
        input_range: ``(lo, hi)`` of the images, mapped to ``[-1, 1]`` inside the loss (the official range; see the
            module docstring). Defaults to ``None`` (as given).
    """

    def __init__(self, weight: float = 5.0, input_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if input_range is not None and not float(input_range[1]) > float(input_range[0]):
            raise ValueError(f"input_range must be (lo, hi) with hi > lo, got {input_range}")
        self.weight = float(weight)
        self.input_range = None if input_range is None else (float(input_range[0]), float(input_range[1]))

    def forward(self, network: nn.Module, inputs: Tensor, targets: Mapping[str, Tensor] | None) -> tuple[Tensor, dict]:
        """Residual ``network(features, pred)`` compared with the target images.

        A :class:`~medood.networks.nets.heatmap_decoder.HeatmapDecoderEnsemble` returns ``K`` residuals per image
        (concatenated along the batch): each is compared with the same targets, the loss is the sum of theirs (so
        each member's gradient is exactly that of its own training).
        """
        if not isinstance(targets, Mapping) or any(k not in targets for k in TARGET_KEYS):
            raise ValueError(f"the heatmap stage needs the batch keys {TARGET_KEYS} besides the image")
        h = network(targets["features"].float(), targets["pred"].reshape(-1).long())
        members = h.split(inputs.shape[0]) if inputs.shape[0] else (h,)  # > 1: a decoder ensemble, concatenated
        t, w, r = targets["target"], self.weight, self.input_range
        loss = torch.stack([weighted_residual_loss(inputs, hk, t, w, r) for hk in members]).sum()
        return loss, {"pred": h.detach()}
