"""Dictionary versions of the image-space synthetic anomalies (:mod:`medood.transforms.anomalies`).

Every ``keys`` entry gets the same anomaly (one random draw per call: same shape, place and parameters, e.g. the
contrasts of one subject); the pixel mask of the first key goes to ``mask_key``. :class:`RandPatchTransplantd`
takes its donor from ``donor_key`` (another slice or subject; the image itself when absent).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from medood.transforms.anomalies import (
    ImageAnomaly,
    RandBlobIntensity,
    RandLocalIntensityScale,
    RandMassEffect,
    RandPatchTransplant,
    RandTexturedNoise,
    Range,
)

__all__ = [
    "ImageAnomalyd",
    "RandBlobIntensityd",
    "RandLocalIntensityScaled",
    "RandMassEffectd",
    "RandPatchTransplantd",
    "RandTexturedNoised",
]


class ImageAnomalyd(Randomizable, MapTransform):
    """Dictionary wrapper of an :class:`~medood.transforms.anomalies.ImageAnomaly`.

    Args:
        keys: image keys to corrupt (identically).
        transform: the array transform.
        mask_key: where the float32 anomaly mask ``(1, *spatial)`` goes. Defaults to ``"anomaly_mask"``.
        donor_key: key of the donor image handed to the transform (``None`` = none). Defaults to None.
        allow_missing_keys: don't raise when a key is missing. Defaults to False.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: ImageAnomaly,
        mask_key: str = "anomaly_mask",
        donor_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.transform, self.mask_key, self.donor_key = transform, mask_key, donor_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> ImageAnomalyd:
        """Seed the wrapped transform too."""
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw the anomaly of this call."""
        self.transform.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Corrupt every key with the same draw; write the first key's mask to ``mask_key``."""
        d = dict(data)
        self.randomize()
        donor = d.get(self.donor_key) if self.donor_key is not None else None
        mask = None
        for key in self.key_iterator(d):
            d[key], m = self.transform(d[key], donor=donor, randomize=False)
            mask = m if mask is None else mask
        if mask is not None:
            d[self.mask_key] = mask
        return d


class RandBlobIntensityd(ImageAnomalyd):
    """Dictionary version of :class:`~medood.transforms.anomalies.RandBlobIntensity` (same arguments)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        radius: Range = (3.0, 12.0),
        delta: Range = (0.15, 0.6),
        hyper_prob: float = 0.5,
        mask_key: str = "anomaly_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandBlobIntensity(prob, radius, delta, hyper_prob), mask_key, None, allow_missing_keys)


class RandLocalIntensityScaled(ImageAnomalyd):
    """Dictionary version of :class:`~medood.transforms.anomalies.RandLocalIntensityScale` (same arguments)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        radius: Range = (3.0, 12.0),
        factor: Range = (1.25, 1.8),
        mask_key: str = "anomaly_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandLocalIntensityScale(prob, radius, factor), mask_key, None, allow_missing_keys)


class RandTexturedNoised(ImageAnomalyd):
    """Dictionary version of :class:`~medood.transforms.anomalies.RandTexturedNoise` (same arguments)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        radius: Range = (3.0, 12.0),
        amplitude: Range = (0.1, 0.35),
        correlation: Range = (0.5, 2.5),
        mask_key: str = "anomaly_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        transform = RandTexturedNoise(prob, radius, amplitude, correlation)
        super().__init__(keys, transform, mask_key, None, allow_missing_keys)


class RandPatchTransplantd(ImageAnomalyd):
    """Dictionary version of :class:`~medood.transforms.anomalies.RandPatchTransplant`, donor from ``donor_key``."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        radius: Range = (3.0, 12.0),
        intensity: Range = (0.85, 1.2),
        min_shift: float = 6.0,
        mask_key: str = "anomaly_mask",
        donor_key: str | None = "donor",
        allow_missing_keys: bool = False,
    ) -> None:
        transform = RandPatchTransplant(prob, radius, intensity, min_shift)
        super().__init__(keys, transform, mask_key, donor_key, allow_missing_keys)


class RandMassEffectd(ImageAnomalyd):
    """Dictionary version of :class:`~medood.transforms.anomalies.RandMassEffect` (same arguments)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        radius: Range = (3.0, 8.0),
        strength: Range = (1.0, 3.0),
        mask_displacement: float = 1.0,
        mask_key: str = "anomaly_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        transform = RandMassEffect(prob, radius, strength, mask_displacement)
        super().__init__(keys, transform, mask_key, None, allow_missing_keys)
