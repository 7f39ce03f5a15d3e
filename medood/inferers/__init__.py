"""Inferers that stitch anomaly maps and reduce them to slice and volume scores."""

from __future__ import annotations

from medood.inferers.ood_inferer import OODInferenceResult, OODSlidingWindowInferer
from medood.inferers.reduce import reduce_map, reduce_slices

__all__ = ["OODInferenceResult", "OODSlidingWindowInferer", "reduce_map", "reduce_slices"]
