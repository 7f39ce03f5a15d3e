"""Ignite engines: the OOD evaluator and the step trainer for detector-owned networks."""

from __future__ import annotations

from medood.engines.evaluator import OODEvaluator
from medood.engines.trainers import StepTrainer

__all__ = ["OODEvaluator", "StepTrainer"]
