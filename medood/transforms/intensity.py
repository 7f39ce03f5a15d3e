"""Intensity normalisation inside the foreground (skull-stripped MRI: background is exactly 0)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils.type_conversion import convert_to_tensor

__all__ = ["ScaleNonzeroPercentile", "ScaleNonzeroPercentiled"]


class ScaleNonzeroPercentile(Transform):
    """Divide an image by the ``upper`` percentile of its non-zero voxels; the background stays 0.

    MR intensities have no absolute scale, but 0 means "outside the brain" in skull-stripped images. Scaling by a
    robust high percentile of the brain voxels maps healthy tissue to about ``[0, 1]`` whatever the input's data
    type, value range or scanner, keeps hyper-intense lesions above 1, and keeps the background exactly 0, so
    ``x > 0`` remains the brain mask. Negative inputs (e.g. a z-scored volume) are shifted so that their minimum
    maps to 0 first.

    Args:
        upper: percentile of the non-zero voxels mapped to 1. Defaults to 99.
        clip_max: clip the result at this value (``None`` = no clipping). Defaults to 3.
    """

    def __init__(self, upper: float = 99.0, clip_max: float | None = 3.0) -> None:
        if not 0.0 < upper <= 100.0:
            raise ValueError(f"upper must be in (0, 100], got {upper}")
        self.upper, self.clip_max = upper, clip_max

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Scale ``img`` (any dtype) channel-wise; returns float32 of the same type (MetaTensor kept)."""
        x = convert_to_tensor(img, track_meta=True).float()
        out = x.clone()
        for c in range(x.shape[0]):
            ch = x[c]
            if ch.min() < 0:
                ch = ch - ch.min()
            nz = ch[ch > 0]
            if nz.numel() == 0:
                out[c] = ch
                continue
            sample = nz if nz.numel() <= 2_000_000 else nz[torch.randperm(nz.numel())[:2_000_000]]
            scale = torch.quantile(sample, self.upper / 100.0).clamp_min(1e-8)
            res = ch / scale
            out[c] = res if self.clip_max is None else res.clamp(max=self.clip_max)
        return out


class ScaleNonzeroPercentiled(MapTransform):
    """Dictionary version of :class:`ScaleNonzeroPercentile`."""

    def __init__(
        self, keys: KeysCollection, upper: float = 99.0, clip_max: float | None = 3.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleNonzeroPercentile(upper, clip_max)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Scale every key."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d
