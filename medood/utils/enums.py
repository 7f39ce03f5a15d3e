"""String enums shared by detectors, engines, handlers and bundle configs."""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A ``str`` enum whose members format as their value (Python 3.10 compatible)."""

    def __str__(self) -> str:
        return str(self.value)


class OODKeys(StrEnum):
    """Dictionary keys used throughout medood (the analogue of MONAI's ``CommonKeys``).

    Bundle configs reference them as ``$medood.utils.OODKeys.SCORE``.
    """

    IMAGE = "image"
    LABEL = "label"
    MASK = "mask"
    SCORE = "ood_score"
    MAP = "ood_map"
    IS_OOD = "is_ood"
    FEATURES = "features"
    LOGITS = "logits"
    CASE = "case"
    SLICE_SCORES = "slice_scores"


class MapReduction(StrEnum):
    """How an anomaly map is reduced to a slice or volume score."""

    MAX = "max"
    MEAN = "mean"
    TOPK = "topk"
