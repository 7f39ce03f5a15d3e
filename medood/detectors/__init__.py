"""OOD / anomaly detectors: one module per method, all registered in :mod:`medood.detectors.base`.

Score: higher = more OOD. See :class:`~medood.detectors.base.OODDetector` for the contract.
"""

from __future__ import annotations

from medood.detectors.base import (
    NotFittedError,
    OODDetector,
    OODOutput,
    get_detector,
    get_detector_class,
    list_detectors,
    register_detector,
    unpack_batch,
)
from medood.detectors.calibration import Calibration

# Detector modules (importing one registers it). Keep one line per module, alphabetical.
from medood.detectors import msp  # noqa: F401, E402  isort: skip
from medood.detectors import reconstruction  # noqa: F401, E402  isort: skip

__all__ = [
    "Calibration",
    "NotFittedError",
    "OODDetector",
    "OODOutput",
    "get_detector",
    "get_detector_class",
    "list_detectors",
    "register_detector",
    "unpack_batch",
]
