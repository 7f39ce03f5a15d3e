"""Colour for RGB classifiers: grey and RGBA images to three channels, and saturation jitter."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform

from medood.transforms._shared import SharedDrawd

__all__ = ["RandSaturation", "RandSaturationd", "ToRGB", "ToRGBd"]

#: ITU-R BT.601 luma weights (what torchvision's grayscale and saturation use).
LUMA = (0.299, 0.587, 0.114)


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


class RandSaturation(RandomizableTransform):
    """Scale the colour saturation of an RGB image by a random factor (torchvision's ``ColorJitter(saturation=)``).

    ``out = grey + f * (img - grey)`` with ``grey`` the BT.601 luma and ``f`` uniform in ``[1 - factors, 1 + factors]``
    (0 = grey, 1 = unchanged), clipped to ``[0, 1]`` when ``clip``. Channel-first ``(3, *S)`` images.

    Args:
        factors: the half-width of the factor range. Defaults to 0.5.
        prob: probability of the transform. Defaults to 1.0.
        clip: clip the result to ``[0, 1]`` (inputs scaled to ``[0, 1]``). Defaults to ``True``.

    Raises:
        ValueError: ``factors`` negative or above 1.
    """

    def __init__(self, factors: float = 0.5, prob: float = 1.0, clip: bool = True) -> None:
        super().__init__(prob)
        if not 0.0 <= factors <= 1.0:
            raise ValueError(f"factors must be in [0, 1], got {factors}")
        self.factors, self.clip = factors, clip
        self.factor = 1.0

    def randomize(self, data: object = None) -> None:
        """Draw whether to apply the transform and the factor."""
        super().randomize(None)
        self.factor = float(self.R.uniform(1.0 - self.factors, 1.0 + self.factors))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """Return ``img`` with its saturation scaled.

        Raises:
            ValueError: ``img`` does not have 3 channels.
        """
        if img.shape[0] != 3:
            raise ValueError(f"saturation needs an RGB image (3, *S), got shape {tuple(img.shape)}")
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        weights = torch.tensor(LUMA, dtype=img.dtype, device=img.device).view(3, *[1] * (img.ndim - 1))
        grey = (img * weights).sum(0, keepdim=True)
        out = grey + self.factor * (img - grey)
        return out.clamp(0.0, 1.0) if self.clip else out


class RandSaturationd(SharedDrawd):
    """Dictionary version of :class:`RandSaturation` (one factor for every key of an item)."""

    def __init__(
        self, keys: KeysCollection, factors: float = 0.5, prob: float = 1.0, clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(keys, prob, allow_missing_keys)
        self.saturation = self.inner = RandSaturation(factors, 1.0, clip)
