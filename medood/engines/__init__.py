"""Ignite engines: the OOD evaluator and the step trainer for detector-owned networks."""

from __future__ import annotations

from medood.engines.evaluator import OODEvaluator
from medood.engines.prepare import PrepareKeys
from medood.engines.resume import latest_checkpoint, resume_training
from medood.engines.trainers import StepEvaluator, StepTrainer

__all__ = ["OODEvaluator", "PrepareKeys", "StepEvaluator", "StepTrainer", "latest_checkpoint", "resume_training"]
