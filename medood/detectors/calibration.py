"""In-distribution calibration: quantiles of healthy image scores and map values, saved with the weights.

Every threshold medood uses (the mask threshold, the ``is_ood`` flag, the colour window of an overlay) is read
from these quantiles, which come from in-distribution validation data only, never from the test data and
never from per-image min-max scaling.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["CALIBRATION_LEVELS", "Calibration", "Thresholds", "overlay_window"]

#: Quantile levels stored: every 0.1 % plus a finer tail (99.95 %, 99.99 %).
CALIBRATION_LEVELS = (
    torch.cat(
        [torch.linspace(0.0, 1.0, 1001, dtype=torch.float64), torch.tensor([0.9995, 0.9999], dtype=torch.float64)]
    )
    .sort()
    .values.float()
)


class Thresholds(NamedTuple):
    """What the outputs of a run are thresholded with, all from healthy data.

    Attributes:
        map: map-value threshold of the masks (``None`` = not calibrated).
        score: image-score threshold of the ``flagged`` decision (``None`` = not calibrated).
        window: ``(low, high)`` colour window of map overlays (:func:`overlay_window` of ``map``), or ``None``.
    """

    map: float | None
    score: float | None
    window: tuple[float, float] | None


def overlay_window(map_threshold: float) -> tuple[float, float]:
    """The fixed colour window of map overlays: from the healthy threshold to four times it.

    Every overlay, montage and Slicer scene of a run uses it, so colours mean the same in every image.
    """
    return map_threshold, 4.0 * map_threshold if map_threshold > 0 else map_threshold + 1.0


class Calibration(nn.Module):
    """Stores quantiles of in-distribution image scores and map values as buffers.

    The buffers have a fixed size, so an uncalibrated module and a calibrated one share one ``state_dict``
    layout; ``NaN`` marks "not calibrated".
    """

    levels: Tensor
    score_quantiles: Tensor
    map_quantiles: Tensor
    n_scores: Tensor
    n_map_values: Tensor

    def __init__(self) -> None:
        super().__init__()
        n = CALIBRATION_LEVELS.numel()
        self.register_buffer("levels", CALIBRATION_LEVELS.clone())
        self.register_buffer("score_quantiles", torch.full((n,), float("nan")))
        self.register_buffer("map_quantiles", torch.full((n,), float("nan")))
        self.register_buffer("n_scores", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_map_values", torch.zeros((), dtype=torch.long))

    @property
    def has_scores(self) -> bool:
        """Whether image-score quantiles have been recorded."""
        return bool(self.n_scores > 0)

    @property
    def has_map(self) -> bool:
        """Whether map-value quantiles have been recorded."""
        return bool(self.n_map_values > 0)

    @torch.no_grad()
    def update(self, scores: Tensor, map_values: Tensor | None = None) -> None:
        """Replace the stored quantiles with those of ``scores`` and (if given) ``map_values``."""
        scores = scores.detach().reshape(-1).double().cpu()
        scores = scores[torch.isfinite(scores)]
        if scores.numel() == 0:
            raise ValueError("calibration needs at least one finite image score")
        levels = self.levels.double().cpu()
        self.score_quantiles.copy_(torch.quantile(scores, levels).float())
        self.n_scores.fill_(scores.numel())
        if map_values is not None:
            v = map_values.detach().reshape(-1).double().cpu()
            v = v[torch.isfinite(v)]
            if v.numel() == 0:
                raise ValueError("calibration got map values, but none is finite")
            # torch.quantile is limited to 2**24 elements; callers subsample before this point.
            self.map_quantiles.copy_(torch.quantile(v[: 2**24], levels).float())
            self.n_map_values.fill_(v.numel())

    def quantile(self, q: float, kind: str = "map") -> float:
        """Interpolated in-distribution quantile ``q`` in ``[0, 1]`` of ``kind`` (``"map"`` or ``"score"``).

        Raises:
            ValueError: ``q`` outside ``[0, 1]`` or an unknown ``kind``.
            RuntimeError: not calibrated for ``kind``.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile level must be in [0, 1], got {q}")
        if kind not in ("map", "score"):
            raise ValueError(f"kind must be 'map' or 'score', got {kind!r}")
        values = self.map_quantiles if kind == "map" else self.score_quantiles
        if not (self.has_map if kind == "map" else self.has_scores):
            raise RuntimeError(
                f"no in-distribution {kind} quantiles recorded: calibrate on healthy validation data first "
                "(medood.engines.calibrate_detector or the bundle's calibration stage)"
            )
        levels = self.levels.double()
        idx = int(torch.searchsorted(levels, torch.tensor([q], dtype=torch.float64)).item())
        idx = min(max(idx, 1), levels.numel() - 1)
        lo, hi = levels[idx - 1].item(), levels[idx].item()
        vlo, vhi = values[idx - 1].item(), values[idx].item()
        w = 0.0 if hi == lo else (q - lo) / (hi - lo)
        return float(vlo + w * (vhi - vlo))

    def thresholds(self, map_percentile: float = 99.5, score_percentile: float = 95.0) -> Thresholds:
        """The thresholds of a run: map and score percentiles of the healthy data, and the overlay window.

        Args:
            map_percentile: healthy map-value percentile of the mask threshold. Defaults to 99.5.
            score_percentile: healthy image-score percentile of the ``flagged`` threshold. Defaults to 95.
        """
        map_thr = self.quantile(map_percentile / 100.0, "map") if self.has_map else None
        score_thr = self.quantile(score_percentile / 100.0, "score") if self.has_scores else None
        return Thresholds(map_thr, score_thr, None if map_thr is None else overlay_window(map_thr))

    def to_dict(self, percentiles: tuple[float, ...] = (50.0, 95.0, 99.0, 99.9)) -> dict[str, dict[str, float]]:
        """A small JSON-able summary (percentile -> value) of what is recorded."""
        out: dict[str, dict[str, float]] = {}
        for kind, ok in (("score", self.has_scores), ("map", self.has_map)):
            if ok:
                out[kind] = {f"p{p:g}": self.quantile(p / 100.0, kind) for p in percentiles}
        return out
