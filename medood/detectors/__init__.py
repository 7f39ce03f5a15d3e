"""OOD / anomaly detectors: one module per method, each registered with ``@register_detector("name")``.

Score: higher = more OOD. See :class:`~medood.detectors.base.OODDetector` for the contract.

Adding a detector is one file plus its registration: importing this package imports every module in it (so
every ``@register_detector`` runs), and the registered classes are reachable by class name
(``medood.detectors.MIMDetector``, as the bundle configs write it) as well as by registry name
(``get_detector("mim")``). The registry-wide contract test covers a new file with no test edit
(:meth:`~medood.detectors.base.OODDetector.tiny_config`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from medood.detectors.base import NotFittedError, OODDetector, OODOutput
from medood.detectors.calibration import Calibration
from medood.detectors.registry import (
    detector_classes,
    get_detector,
    get_detector_class,
    list_detectors,
    register_detector,
)
from medood.detectors.stages import TrainingStage

__all__ = [
    "Calibration",
    "NotFittedError",
    "OODDetector",
    "OODOutput",
    "TrainingStage",
    "detector_classes",
    "get_detector",
    "get_detector_class",
    "list_detectors",
    "register_detector",
]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def __getattr__(name: str) -> Any:
    """A registered detector class by its class name (``medood.detectors.MIMDetector``)."""
    for cls in detector_classes():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
