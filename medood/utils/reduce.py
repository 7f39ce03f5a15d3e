"""Reductions of an anomaly map to slice scores and a volume / image score.

All reductions take maps ``(B, 1, *spatial)`` and an optional boolean foreground mask of the same shape
(e.g. the brain): background voxels are ignored. ``topk`` is the mean of the ``k`` highest voxels, with ``k`` an
integer count or a fraction of the foreground voxels (``0.001`` = top 0.1 %), which is robust to single hot
voxels while still reacting to small lesions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import Tensor

from medood.utils.enums import MapReduction

__all__ = ["reduce_map", "reduce_slices", "rim_eroded"]


def _k_of(k: int | float, n: int) -> int:
    if isinstance(k, float) and 0.0 < k < 1.0:
        return max(1, math.ceil(k * n))
    k = int(k)
    if k < 1:
        raise ValueError(f"topk needs k >= 1 (or a fraction in (0, 1)), got {k}")
    return min(k, max(n, 1))


def _reduce_rows(values: Tensor, valid: Tensor | None, reduction: str, k: int | float) -> Tensor:
    """Reduce each row of ``values`` (R, N) over its ``valid`` entries; rows without valid entries give 0."""
    mode = MapReduction(reduction)
    values = values.float()
    if valid is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    counts = valid.sum(1)
    if mode is MapReduction.MEAN:
        out = (values * valid).sum(1) / counts.clamp_min(1)
    else:
        masked = values.masked_fill(~valid, float("-inf"))
        if mode is MapReduction.MAX:
            out = masked.amax(1)
        else:  # top-k mean, k per row from the row's own foreground size
            kmax = _k_of(k, int(counts.max().item()) if counts.numel() else 1)
            top = masked.topk(min(kmax, masked.shape[1]), dim=1).values
            krow = torch.tensor([_k_of(k, int(c)) for c in counts.tolist()], device=values.device)
            krow = torch.minimum(krow, counts.clamp_min(1))
            take = torch.arange(top.shape[1], device=values.device)[None, :] < krow[:, None]
            out = (top.masked_fill(~take, 0.0)).sum(1) / krow.clamp_min(1)
    return torch.where(counts > 0, out, torch.zeros_like(out))


def reduce_map(
    anomaly_map: Tensor, reduction: str = "max", k: int | float = 0.001, mask: Tensor | None = None
) -> Tensor:
    """Reduce maps ``(B, 1, *spatial)`` to one score per image ``(B,)``.

    Args:
        anomaly_map: the maps.
        reduction: ``"max"``, ``"mean"`` or ``"topk"`` (mean of the top ``k``). Defaults to ``"max"``.
        k: for ``topk``: a count, or a fraction of the foreground voxels. Defaults to 0.001.
        mask: optional boolean foreground ``(B, 1, *spatial)`` (broadcastable); background is ignored.
            An image with an empty foreground scores 0.
    """
    if anomaly_map.ndim < 3:
        raise ValueError(f"expected maps (B, 1, *spatial), got shape {tuple(anomaly_map.shape)}")
    b = anomaly_map.shape[0]
    valid = None if mask is None else mask.expand_as(anomaly_map).reshape(b, -1).bool()
    return _reduce_rows(anomaly_map.reshape(b, -1), valid, reduction, k)


def reduce_slices(
    anomaly_map: Tensor, axis: int, reduction: str = "max", k: int | float = 0.01, mask: Tensor | None = None
) -> Tensor:
    """Reduce maps ``(B, 1, *spatial)`` to per-slice scores ``(B, n_slices)`` along spatial ``axis``.

    Args:
        anomaly_map: the maps.
        axis: spatial axis index (0-based over the spatial dims; ``-1`` = last).
        reduction: ``"max"``, ``"mean"`` or ``"topk"``. Defaults to ``"max"``.
        k: for ``topk``: a count, or a fraction of each slice's foreground voxels. Defaults to 0.01.
        mask: optional boolean foreground, broadcastable to the map. Empty slices score 0.
    """
    n_spatial = anomaly_map.ndim - 2
    if n_spatial < 2:
        raise ValueError(f"slice scores need at least 2 spatial dims, got map shape {tuple(anomaly_map.shape)}")
    ax = axis % n_spatial if -n_spatial <= axis < n_spatial else None
    if ax is None:
        raise ValueError(f"axis {axis} out of range for {n_spatial} spatial dims")
    b = anomaly_map.shape[0]
    moved = anomaly_map.movedim(2 + ax, 1)  # (B, n, 1, ...)
    n = moved.shape[1]
    values = moved.reshape(b * n, -1)
    valid = None
    if mask is not None:
        valid = mask.expand_as(anomaly_map).movedim(2 + ax, 1).reshape(b * n, -1).bool()
    return _reduce_rows(values, valid, reduction, k).reshape(b, n)


def rim_eroded(mask: Tensor, steps: int) -> Tensor:
    """Boolean masks ``(B, 1, *spatial)`` without their ``steps``-voxel rim (6- / 4-connected erosion steps, per image).

    The rim of a skull-stripped brain is partial volume and skull-strip error at another site; a volume score reduced
    over the eroded mask leaves it out (``SliceRestorationDetector(score_erode=...)``).
    """
    if steps <= 0:
        return mask.bool()
    out = [ndi.binary_erosion(m[0].cpu().numpy().astype(bool), iterations=steps) for m in mask]
    return torch.from_numpy(np.stack(out))[:, None].to(mask.device)
