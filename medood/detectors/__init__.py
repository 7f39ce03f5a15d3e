"""OOD / anomaly detectors: one module per method, all registered in :mod:`medood.detectors.base`.

Score: higher = more OOD. See :class:`~medood.detectors.base.OODDetector` for the contract.
"""

from __future__ import annotations

from medood.detectors.base import NotFittedError, OODDetector, OODOutput
from medood.detectors.calibration import Calibration
from medood.detectors.registry import get_detector, get_detector_class, list_detectors, register_detector
from medood.utils.batch import unpack_batch

# Detector modules (importing one registers it). Keep one line per module, alphabetical.
from medood.detectors.energy import EnergyDetector  # isort: skip
from medood.detectors.entropy import EntropyDetector  # isort: skip
from medood.detectors.gradnorm import GradNormDetector  # isort: skip
from medood.detectors.knn import KNNDetector  # isort: skip
from medood.detectors.mahalanobis import MahalanobisDetector  # isort: skip
from medood.detectors.maxlogit import MaxLogitDetector  # isort: skip
from medood.detectors.mim import MIMDetector  # isort: skip
from medood.detectors.msp import MSPDetector  # isort: skip
from medood.detectors.neco import NECODetector  # isort: skip
from medood.detectors.nero import NERODetector  # isort: skip
from medood.detectors.odin import ODINDetector  # isort: skip
from medood.detectors.react import ReActDetector  # isort: skip
from medood.detectors.reconstruction import ReconstructionDetector  # isort: skip
from medood.detectors.vim import ViMDetector  # isort: skip
from medood.detectors.vqvae_ar import VQVAEARDetector  # isort: skip
from medood.detectors.vqvae_recon import VQVAEReconstructionDetector  # isort: skip

__all__ = [
    "Calibration",
    "EnergyDetector",
    "EntropyDetector",
    "GradNormDetector",
    "KNNDetector",
    "MIMDetector",
    "MSPDetector",
    "MahalanobisDetector",
    "MaxLogitDetector",
    "NECODetector",
    "NERODetector",
    "NotFittedError",
    "ODINDetector",
    "OODDetector",
    "OODOutput",
    "ReActDetector",
    "ReconstructionDetector",
    "VQVAEARDetector",
    "VQVAEReconstructionDetector",
    "ViMDetector",
    "get_detector",
    "get_detector_class",
    "list_detectors",
    "register_detector",
    "unpack_batch",
]
