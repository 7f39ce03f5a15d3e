"""Channel conversion for RGB classifiers: grey and RGBA images to three channels."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["ToRGB", "ToRGBd"]


class ToRGB(Transform):
    """``(1, *S)`` grey -> 3 identical channels; ``(4, *S)`` RGBA -> the first 3; ``(3, *S)`` unchanged.

    Channel-first images of any spatial size (a MetaTensor stays a MetaTensor).

    Raises:
        ValueError: any other channel count.
    """

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Return ``img`` with 3 channels."""
        channels = img.shape[0]
        if channels == 3:
            return img
        if channels == 1:
            return img.repeat(3, *([1] * (img.ndim - 1)))
        if channels == 4:
            return img[:3]
        raise ValueError(f"expected a grey, RGB or RGBA image, got {channels} channels (shape {tuple(img.shape)})")


class ToRGBd(MapTransform):
    """Dictionary version of :class:`ToRGB`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToRGB()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Convert every key."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
