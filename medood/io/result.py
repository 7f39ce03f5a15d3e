"""``OODResult``: what a detector found for one case, as the inferer hands it to the evaluator and every writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["OODResult"]


@dataclass
class OODResult:
    """One case's result (made by :class:`medood.inferers.OODInferer`, for every detector).

    Attributes:
        case: the case id (file name without image extensions, or the dataset's case field).
        score: image / volume score, higher = more anomalous.
        anomaly_map: ``(1, *spatial)`` float32 map on the input's grid (after ``Invertd``), or ``None`` for
            detectors that give image scores only.
        slice_scores: ``{axis: (n_slices,)}`` slice scores along the input file's voxel axes (empty for 2D / no map).
        flagged: ``score > threshold`` once a threshold is known (``None`` before).
        threshold: the image-score threshold ``flagged`` used (healthy calibration), or ``None``.
        label: ground truth when the data carries it (1 = OOD / anomalous), else ``None``.
        image: the input file, when known.
        foreground: ``(1, *spatial)`` boolean foreground on the map's grid, when the preprocessing computed one.
        map_kind: the map's kind in file names (``anomaly``, ``cam``, ``heatmap`` ...).
        extras: named values that explain the score (e.g. NERO's relevance, guard companions' scores).
    """

    case: str
    score: float
    anomaly_map: Tensor | None = None
    slice_scores: dict[int, Tensor] = field(default_factory=dict)
    flagged: bool | None = None
    threshold: float | None = None
    label: int | None = None
    image: str | None = None
    foreground: Tensor | None = None
    map_kind: str = "anomaly"
    extras: dict[str, Any] = field(default_factory=dict)

    def decide(self, threshold: float | None) -> OODResult:
        """Set ``threshold`` and ``flagged = score > threshold`` (no decision without a threshold); returns self."""
        self.threshold = None if threshold is None else float(threshold)
        self.flagged = None if threshold is None else bool(self.score > float(threshold))
        return self

    def row(self) -> dict[str, Any]:
        """The case's ``scores.csv`` row (``case,score,flagged[,label][,image]``)."""
        out: dict[str, Any] = {"case": self.case, "score": self.score, "flagged": self.flagged}
        if self.label is not None:
            out["label"] = self.label
        if self.image is not None:
            out["image"] = self.image
        return out
