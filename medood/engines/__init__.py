"""Ignite engines: the OOD evaluator, the stage trainers of detector-owned networks, fitting and calibration."""

from __future__ import annotations

from medood.engines.calibrate import calibrate_bundle, calibrate_detector
from medood.engines.distributed import amp_enabled
from medood.engines.evaluator import OODEvaluator
from medood.engines.fit import StageEvaluator, StageTrainer, fit_detector
from medood.engines.prepare import PrepareKeys
from medood.engines.resume import TrainingCheckpoint, latest_checkpoint, resume_training
from medood.engines.trainers import StepEvaluator, StepTrainer

__all__ = [
    "OODEvaluator",
    "PrepareKeys",
    "StageEvaluator",
    "StageTrainer",
    "StepEvaluator",
    "StepTrainer",
    "TrainingCheckpoint",
    "amp_enabled",
    "calibrate_bundle",
    "calibrate_detector",
    "fit_detector",
    "latest_checkpoint",
    "resume_training",
]
