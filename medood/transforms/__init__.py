"""medood transforms (array / dictionary pairs, MONAI style)."""

from __future__ import annotations

from medood.transforms.color import RandSaturation, RandSaturationd, ToRGB, ToRGBd
from medood.transforms.corruptions import CORRUPTIONS, Corrupt, Corruptd, corruption_plan
from medood.transforms.intensity import ScaleNonzeroPercentile, ScaleNonzeroPercentiled
from medood.transforms.slices import RandSlices, RandSlicesd, foreground_extent, slice_positions

__all__ = [
    "CORRUPTIONS",
    "Corrupt",
    "Corruptd",
    "RandSaturation",
    "RandSaturationd",
    "RandSlices",
    "RandSlicesd",
    "ScaleNonzeroPercentile",
    "ScaleNonzeroPercentiled",
    "ToRGB",
    "ToRGBd",
    "corruption_plan",
    "foreground_extent",
    "slice_positions",
]
