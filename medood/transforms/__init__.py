"""medood transforms (array / dictionary pairs, MONAI style)."""

from __future__ import annotations

from medood.transforms.intensity import ScaleNonzeroPercentile, ScaleNonzeroPercentiled
from medood.transforms.slices import RandSlices, RandSlicesd, foreground_extent, slice_positions

__all__ = [
    "RandSlices",
    "RandSlicesd",
    "ScaleNonzeroPercentile",
    "ScaleNonzeroPercentiled",
    "foreground_extent",
    "slice_positions",
]
