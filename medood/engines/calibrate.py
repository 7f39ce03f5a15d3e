"""Calibrate a detector on healthy / in-distribution validation data, outside a bundle config."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from medood.detectors.base import OODDetector
from medood.detectors.calibration import Calibration
from medood.engines.evaluator import OODEvaluator
from medood.handlers.detector_fit import CalibrationHandler
from medood.inferers.ood_inferer import OODInferer

__all__ = ["calibrate_detector"]


def calibrate_detector(
    detector: OODDetector,
    loader: Iterable[Any],
    inferer: OODInferer | None = None,
    foreground: str | Callable[[dict], Tensor] = "nonzero",
    device: str | torch.device | None = None,
) -> Calibration:
    """Record healthy score and map-value quantiles into ``detector.calibration``.

    Runs the same evaluator pass and :class:`~medood.handlers.CalibrationHandler` a bundle's calibration stage
    runs, so thresholds are sampled identically in both places.

    Args:
        detector: a fitted detector.
        loader: healthy validation batches (``{"image": ...}`` dicts; data the detector was not fitted on).
        inferer: the inferer (default: whole-input :class:`~medood.inferers.OODInferer`).
        foreground: which map values count (see :class:`~medood.handlers.CalibrationHandler`). Defaults to
            ``"nonzero"``.
        device: where to run (default: the detector's device).

    Returns:
        ``detector.calibration``.
    """
    detector.check_fitted()
    evaluator = OODEvaluator(
        device=torch.device(device) if device is not None else detector.device,
        val_data_loader=loader,  # type: ignore[arg-type]
        network=detector,
        inferer=inferer or OODInferer(),
        val_handlers=[CalibrationHandler(detector, foreground=foreground)],
        decollate=True,
    )
    evaluator.run()
    return detector.calibration
