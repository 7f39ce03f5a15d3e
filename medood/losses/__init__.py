"""Stage losses: ``loss(network, inputs, targets) -> (loss, outputs)`` callables run by the stage trainers.

They sit between the networks and the detectors: detectors name them in their declared training stages
(:class:`~medood.detectors.stages.TrainingStage`), :mod:`medood.engines` runs them.
"""

from __future__ import annotations

from medood.losses.classification import MultiExitLoss
from medood.losses.heatmap import HeatmapLoss, weighted_residual_loss
from medood.losses.multi_exit import MECAM_EXIT_WEIGHTS, MultiExitStageLoss
from medood.losses.stages import (
    ARTokenLoss,
    ImageAnomalyTokenLoss,
    MaskedTokenLoss,
    ReconstructionLoss,
    TokenDetectorLoss,
    VQVAELoss,
    ar_sequences,
)

__all__ = [
    "MECAM_EXIT_WEIGHTS",
    "ARTokenLoss",
    "HeatmapLoss",
    "ImageAnomalyTokenLoss",
    "MaskedTokenLoss",
    "MultiExitLoss",
    "MultiExitStageLoss",
    "ReconstructionLoss",
    "TokenDetectorLoss",
    "VQVAELoss",
    "ar_sequences",
    "weighted_residual_loss",
]
