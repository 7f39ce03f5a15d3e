"""Ignite / MONAI handlers: result writers, detector fitting and calibration, metrics."""

from __future__ import annotations

from medood.handlers.detector_fit import CalibrationHandler, DetectorFitHandler
from medood.handlers.errors import FailedCasesError, FailedCasesWriter, write_errors_csv
from medood.handlers.metrics import OODAUROC, OODFPR95, BestDice, EngineKeys, OODAUPRIn, OODAUPROut, VoxelAP
from medood.handlers.ood_table import OODTableWriter
from medood.handlers.progress import ProgressBar
from medood.handlers.writers import OODResultWriter, case_name

__all__ = ["CalibrationHandler", "DetectorFitHandler", "OODResultWriter", "OODTableWriter", "ProgressBar", "case_name"]
__all__ += ["FailedCasesError", "FailedCasesWriter", "write_errors_csv"]
__all__ += ["OODAUROC", "OODFPR95", "BestDice", "EngineKeys", "OODAUPRIn", "OODAUPROut", "VoxelAP"]
