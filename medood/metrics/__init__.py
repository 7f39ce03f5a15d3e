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
from medood.metrics.tables import (
    FPR95_CONVENTION,
    METRICS,
    SCORE_CONVENTION,
    ood_metrics,
    results_markdown,
    results_payload,
    results_table,
    write_results,
)

__all__ = [
    "FPR95_CONVENTION",
    "METRICS",
    "OOD_METRIC_NAMES",
    "SCORE_CONVENTION",
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
    "ood_metrics",
    "pixel_ap",
    "pixel_auroc",
    "results_markdown",
    "results_payload",
    "results_table",
    "slice_level_metrics",
    "write_results",
]
