"""The inference step of a detector run: whole-input maps, their volume and slice scores."""

from __future__ import annotations

from medood.inferers.ood_inferer import OODInferenceResult, OODInferer

__all__ = ["OODInferenceResult", "OODInferer"]
