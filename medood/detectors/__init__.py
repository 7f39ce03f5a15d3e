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
from medood.detectors.energy import EnergyDetector  # isort: skip
from medood.detectors.entropy import EntropyDetector  # isort: skip
from medood.detectors.gradnorm import GradNormDetector  # isort: skip
from medood.detectors.knn import KNNDetector  # isort: skip
from medood.detectors.mahalanobis import MahalanobisDetector  # isort: skip
from medood.detectors.maxlogit import MaxLogitDetector  # isort: skip
from medood.detectors import msp  # noqa: F401, E402  isort: skip
from medood.detectors.neco import NECODetector  # isort: skip
from medood.detectors.nero import NERODetector  # isort: skip
from medood.detectors.odin import ODINDetector  # isort: skip
from medood.detectors.react import ReActDetector  # isort: skip
from medood.detectors import reconstruction  # noqa: F401, E402  isort: skip
from medood.detectors.vim import ViMDetector  # isort: skip

__all__ = [
    "EnergyDetector",
    "EntropyDetector",
    "GradNormDetector",
    "KNNDetector",
    "MahalanobisDetector",
    "MaxLogitDetector",
    "NECODetector",
    "NERODetector",
    "ODINDetector",
    "ReActDetector",
    "ViMDetector",
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
