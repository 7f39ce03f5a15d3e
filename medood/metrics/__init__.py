"""OOD and anomaly-segmentation metrics: pure functions and MONAI cumulative metrics.

Score convention: higher = more OOD / more anomalous; OOD images and lesion voxels are the positive class.
Ignite handlers wrapping these metrics live in :mod:`medood.handlers.metrics`.
"""

from __future__ import annotations

from medood.metrics.functional import (
    aupr_in,
    aupr_out,
    auroc,
    average_precision,
    fpr_at_tpr,
    slice_level_metrics,
)
from medood.metrics.ood import OOD_METRIC_NAMES, BestDiceMetric, OODMetrics, OODScoreMetric, VoxelAPMetric
from medood.metrics.segmentation import (
    BestDice,
    DiceCounter,
    ThresholdDice,
    VoxelPool,
    best_dice,
    dice_at_threshold,
    pixel_ap,
    pixel_auroc,
)

__all__ = [
    "OOD_METRIC_NAMES",
    "BestDice",
    "BestDiceMetric",
    "DiceCounter",
    "OODMetrics",
    "OODScoreMetric",
    "ThresholdDice",
    "VoxelAPMetric",
    "VoxelPool",
    "aupr_in",
    "aupr_out",
    "auroc",
    "average_precision",
    "best_dice",
    "dice_at_threshold",
    "fpr_at_tpr",
    "pixel_ap",
    "pixel_auroc",
    "slice_level_metrics",
]
