"""Networks medood trains or hooks into. Plain ``nn.Module``s, ``spatial_dims`` first."""

from __future__ import annotations

from medood.networks.classifiers import ARCHS, build_classifier
from medood.networks.hooks import FeatureExtractor, find_linear_head

__all__ = ["ARCHS", "FeatureExtractor", "build_classifier", "find_linear_head"]
