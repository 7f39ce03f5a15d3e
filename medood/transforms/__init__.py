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
from medood.transforms.color import RandSaturation, RandSaturationd, ToRGB, ToRGBd
from medood.transforms.corruptions import CORRUPTIONS, Corrupt, Corruptd, corruption_plan
from medood.transforms.foreground import FOREGROUND_KEY, Foreground, Foregroundd
from medood.transforms.histogram import HistogramStandardize, HistogramStandardized, learn_landmarks
from medood.transforms.intensity import ScaleNonzeroPercentile, ScaleNonzeroPercentiled
from medood.transforms.policy import RandPolicy, RandPolicyd
from medood.transforms.slices import RandSlices, RandSlicesd, foreground_extent, slice_positions

__all__ = [
    "CORRUPTIONS",
    "FOREGROUND_KEY",
    "Corrupt",
    "Corruptd",
    "Foreground",
    "Foregroundd",
    "HistogramStandardize",
    "HistogramStandardized",
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
    "RandPolicy",
    "RandPolicyd",
    "RandSaturation",
    "RandSaturationd",
    "RandSlices",
    "RandSlicesd",
    "RandTexturedNoise",
    "RandTexturedNoised",
    "ScaleNonzeroPercentile",
    "ScaleNonzeroPercentiled",
    "ToRGB",
    "ToRGBd",
    "corruption_plan",
    "foreground_extent",
    "learn_landmarks",
    "slice_positions",
]
