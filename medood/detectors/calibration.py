"""In-distribution calibration: healthy image scores and map values, saved with the weights.

Every threshold medood uses (the mask threshold, the ``flagged`` / ``is_ood`` decision, the colour window of an
overlay) is read from this module, which holds in-distribution validation data only, never test data and never
per-image min-max scaling. Thresholds follow the one rule of medood,
:func:`medood.utils.conformal.conformal_threshold` (split-conformal: the ``ceil((n+1)(1-alpha))``-th smallest of
the ``n`` stored healthy values), so a flag's false-alarm rate is at most ``alpha`` on data exchangeable with the
calibration set; with too few cases for ``alpha`` the rule refuses
(:class:`~medood.utils.conformal.CalibrationSizeError`).

Stored (as buffers, so a checkpoint carries them):

* ``score_values`` / ``map_values``: the sorted raw calibration values, at most :data:`MAX_STORED` of each
  (``NaN``-padded). Beyond that a seeded uniform random subsample is kept: a random subsample of exchangeable
  scores is still exchangeable with a new score, so the guarantee holds with ``n`` = the number stored.
* ``score_quantiles`` / ``map_quantiles`` at :data:`CALIBRATION_LEVELS` (reports, histograms, overlay windows).

**Map (voxel) thresholds** state a *per-voxel marginal* false-alarm rate: a healthy voxel drawn at random is above
the map threshold with probability at most ``map_alpha``. Map values of one image are many and correlated, so this
is not a per-image rate (an image has many voxels; the chance that *some* voxel of a healthy image is above the
threshold is much larger), and the guarantee is approximate, since the stored voxels come from a few images.

Checkpoints written before the raw values were stored load with a warning; their thresholds are then read off the
stored quantile table at the conformal rank (interpolated), with the same refusal for too-small ``n``. Re-record
them with ``medood calibrate``.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from medood.utils.conformal import CalibrationSizeError, ConformalThreshold, conformal_rank, conformal_threshold

__all__ = ["CALIBRATION_LEVELS", "MAX_STORED", "Calibration", "Thresholds", "overlay_window"]

logger = logging.getLogger(__name__)

#: Raw calibration values kept per kind (image scores, map values); beyond it, a seeded uniform subsample.
MAX_STORED = 4096
#: Default false-alarm rates: 5 % of healthy images flagged, 0.5 % of healthy voxels above the mask threshold.
DEFAULT_ALPHA, DEFAULT_MAP_ALPHA = 0.05, 0.005

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
        score_rule: the flag threshold's record (``rule``, ``alpha``, ``n``, ``rank``, ``expected_rate``, or
            ``refused`` with the reason), ``None`` when no scores are recorded.
        map_rule: the same for the map threshold, with ``scope: "per-voxel marginal"``.
    """

    map: float | None
    score: float | None
    window: tuple[float, float] | None
    score_rule: dict[str, Any] | None = None
    map_rule: dict[str, Any] | None = None


def overlay_window(map_threshold: float) -> tuple[float, float]:
    """The fixed colour window of map overlays: from the healthy threshold to four times it.

    Every overlay, montage and Slicer scene of a run uses it, so colours mean the same in every image.
    """
    return map_threshold, 4.0 * map_threshold if map_threshold > 0 else map_threshold + 1.0


class Calibration(nn.Module):
    """Stores in-distribution image scores and map values (sorted raw values and quantiles) as buffers.

    The buffers have a fixed size, so an uncalibrated module and a calibrated one share one ``state_dict``
    layout; ``NaN`` marks "not calibrated" (and the unused tail of ``score_values`` / ``map_values``).
    """

    levels: Tensor
    score_quantiles: Tensor
    map_quantiles: Tensor
    n_scores: Tensor
    n_map_values: Tensor
    score_values: Tensor
    map_values: Tensor

    def __init__(self) -> None:
        super().__init__()
        n = CALIBRATION_LEVELS.numel()
        self.register_buffer("levels", CALIBRATION_LEVELS.clone())
        self.register_buffer("score_quantiles", torch.full((n,), float("nan")))
        self.register_buffer("map_quantiles", torch.full((n,), float("nan")))
        self.register_buffer("n_scores", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_map_values", torch.zeros((), dtype=torch.long))
        self.register_buffer("score_values", torch.full((MAX_STORED,), float("nan")))
        self.register_buffer("map_values", torch.full((MAX_STORED,), float("nan")))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:  # fmt: skip
        """Load checkpoints written before the raw values were stored: warn, keep ``NaN`` (quantile fallback)."""
        old = [k for k in ("score_values", "map_values") if prefix + k not in state_dict]
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for k in old:
            if prefix + k in missing_keys:
                missing_keys.remove(prefix + k)
            getattr(self, k).fill_(float("nan"))
        if old and bool((state_dict.get(prefix + "n_scores", torch.zeros(())) > 0).item()):
            logger.warning(
                "%s comes from a checkpoint without raw calibration values (%s): thresholds are read off "
                "its quantile table at the split-conformal rank (interpolated); re-record them with "
                "`medood calibrate` for exact ones",
                prefix.rstrip(".") or "calibration",
                ", ".join(old),
            )

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
        _store(self.score_values, scores)
        if map_values is not None:
            v = map_values.detach().reshape(-1).double().cpu()
            v = v[torch.isfinite(v)]
            if v.numel() == 0:
                raise ValueError("calibration got map values, but none is finite")
            # torch.quantile is limited to 2**24 elements; callers subsample before this point.
            self.map_quantiles.copy_(torch.quantile(v[: 2**24], levels).float())
            self.n_map_values.fill_(v.numel())
            _store(self.map_values, v)

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

    def stored(self, kind: str = "score") -> Tensor:
        """The stored raw calibration values of ``kind`` (sorted, float64; empty for old checkpoints)."""
        values = (self.score_values if kind == "score" else self.map_values).detach().double().cpu()
        return values[torch.isfinite(values)]

    def conformal(self, alpha: float, kind: str = "score") -> ConformalThreshold:
        """The split-conformal threshold of the stored healthy ``kind`` values for false-alarm rate ``alpha``.

        Uses :func:`~medood.utils.conformal.conformal_threshold` on the stored raw values. A checkpoint written
        before raw values were stored gives the same rank ``k`` of its recorded ``n``, read off the quantile
        table at level ``(k - 1) / (n - 1)`` (interpolated).

        Raises:
            CalibrationSizeError: ``n`` is too small for ``alpha`` (the message says how many cases are needed).
            RuntimeError: not calibrated for ``kind``.
        """
        if kind not in ("map", "score"):
            raise ValueError(f"kind must be 'map' or 'score', got {kind!r}")
        if not (self.has_map if kind == "map" else self.has_scores):
            raise RuntimeError(
                f"no in-distribution {kind} values recorded: calibrate on healthy validation data first "
                "(`medood calibrate`, medood.engines.calibrate_detector or the bundle's calibration stage)"
            )
        what = "healthy map values" if kind == "map" else "in-distribution cases"
        values = self.stored(kind)
        if values.numel():
            try:
                return conformal_threshold(values.numpy(), alpha)
            except CalibrationSizeError as err:
                raise CalibrationSizeError(err.n, err.alpha, what) from None
        n = int((self.n_map_values if kind == "map" else self.n_scores).item())
        k = conformal_rank(n, alpha)
        if k > n:
            raise CalibrationSizeError(n, alpha, what)
        level = 1.0 if n == 1 else (k - 1) / (n - 1)
        return ConformalThreshold(self.quantile(level, kind), float(alpha), n, k, 1.0 - k / (n + 1))

    def _rule(self, alpha: float, kind: str) -> tuple[float | None, dict[str, Any]]:
        """``(threshold, record)``; a refusal gives ``None`` and a record saying why (logged as a warning)."""
        extra: dict[str, Any] = {"scope": "per-voxel marginal"} if kind == "map" else {"scope": "per-image"}
        try:
            found = self.conformal(alpha, kind)
        except CalibrationSizeError as err:
            logger.warning("no %s threshold: %s", "map" if kind == "map" else "flag", err)
            return None, {"rule": "split-conformal", "alpha": float(alpha), "n": err.n, "refused": str(err), **extra}
        return found.threshold, {**found.to_dict(), **extra}

    def thresholds(
        self,
        map_percentile: float | None = None,
        score_percentile: float | None = None,
        *,
        alpha: float | None = None,
        map_alpha: float | None = None,
    ) -> Thresholds:
        """The thresholds of a run (split-conformal on the healthy values) and the overlay window.

        Args:
            map_percentile: legacy spelling of ``map_alpha = 1 - map_percentile / 100``.
            score_percentile: legacy spelling of ``alpha = 1 - score_percentile / 100``.
            alpha: false-alarm rate of the ``flagged`` decision (per image). Defaults to 0.05.
            map_alpha: per-voxel marginal false-alarm rate of the mask threshold. Defaults to 0.005.

        A rate the calibration set is too small for gives no threshold (``None``) and a rule record with
        ``refused`` (the :class:`~medood.utils.conformal.CalibrationSizeError` message), logged as a warning.
        """
        if alpha is None:
            alpha = DEFAULT_ALPHA if score_percentile is None else round(1.0 - score_percentile / 100.0, 12)
        if map_alpha is None:
            map_alpha = DEFAULT_MAP_ALPHA if map_percentile is None else round(1.0 - map_percentile / 100.0, 12)
        map_thr, map_rule = self._rule(map_alpha, "map") if self.has_map else (None, None)
        score_thr, score_rule = self._rule(alpha, "score") if self.has_scores else (None, None)
        window = None if map_thr is None else overlay_window(map_thr)
        return Thresholds(map_thr, score_thr, window, score_rule, map_rule)

    def to_dict(self, percentiles: tuple[float, ...] = (50.0, 95.0, 99.0, 99.9)) -> dict[str, dict[str, float]]:
        """A small JSON-able summary (percentile -> value) of what is recorded."""
        out: dict[str, dict[str, float]] = {}
        for kind, ok in (("score", self.has_scores), ("map", self.has_map)):
            if ok:
                out[kind] = {f"p{p:g}": self.quantile(p / 100.0, kind) for p in percentiles}
        return out


def _store(buffer: Tensor, values: Tensor) -> None:
    """Write ``values`` sorted into ``buffer`` (``NaN``-padded); more than fit: a seeded uniform subsample."""
    if values.numel() > buffer.numel():
        gen = torch.Generator().manual_seed(0)
        values = values[torch.randperm(values.numel(), generator=gen)[: buffer.numel()]]
    buffer.fill_(float("nan"))
    buffer[: values.numel()] = values.sort().values.to(buffer.dtype)
