"""medood transforms (array / dictionary pairs, MONAI style)."""

from __future__ import annotations

from medood.transforms.anomalies import (
    ImageAnomaly,
    RandBlobIntensity,
    RandLocalIntensityScale,
    RandMassEffect,
    RandPatchTransplant,
    RandTexturedNoise,
)
from medood.transforms.anomalies_dict import (
    ImageAnomalyd,
    RandBlobIntensityd,
    RandLocalIntensityScaled,
    RandMassEffectd,
    RandPatchTransplantd,
    RandTexturedNoised,
)
from medood.transforms.intensity import ScaleNonzeroPercentile, ScaleNonzeroPercentiled
from medood.transforms.slices import RandSlices, RandSlicesd, foreground_extent, slice_positions

__all__ = [
    "ImageAnomaly",
    "ImageAnomalyd",
    "RandBlobIntensity",
    "RandBlobIntensityd",
    "RandLocalIntensityScale",
    "RandLocalIntensityScaled",
    "RandMassEffect",
    "RandMassEffectd",
    "RandPatchTransplant",
    "RandPatchTransplantd",
    "RandSlices",
    "RandSlicesd",
    "RandTexturedNoise",
    "RandTexturedNoised",
    "ScaleNonzeroPercentile",
    "ScaleNonzeroPercentiled",
    "foreground_extent",
    "slice_positions",
]
