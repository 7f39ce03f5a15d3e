"""The detector contract shared by every medood method (the registry is in :mod:`medood.detectors.registry`).

**Score: higher = more OOD / more anomalous.** OOD is the positive class in every metric; where a paper's
score has the opposite sign (MSP, Energy, MECAM, ...), the detector converts it. Two ways in:

* ``fit(loader)`` / ``score(batch)`` run the host network (or the detector's own networks) on images;
* ``fit_features(features, labels)`` / ``score_features(features)`` take precomputed features (a mapping of
  name -> tensor, e.g. ``{"features": ..., "logits": ...}``), so one backbone pass feeds many detectors.

Fitting streams: ``fit`` calls :meth:`OODDetector.partial_fit_features` once per batch and
:meth:`OODDetector.finalize_fit` at the end, so detectors whose method allows it fit in memory independent of
the number of training images. Fitted statistics are registered buffers: ``state_dict()`` round-trips them and
checkpoints load with ``torch.load(..., weights_only=True)``.

Thresholds come from in-distribution data only: :meth:`OODDetector.calibrate` records quantiles of healthy
image scores and map values (a :class:`~medood.detectors.calibration.Calibration` submodule saved with the
weights); masks, ``flagged`` decisions and overlay windows use :meth:`OODDetector.threshold`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from medood.detectors.calibration import Calibration
from medood.utils.batch import as_plain_tensor, unpack_batch
from medood.utils.enums import OODKeys

__all__ = [
    "NotFittedError",
    "OODDetector",
    "OODOutput",
]

logger = logging.getLogger(__name__)

Self = TypeVar("Self", bound="OODDetector")


class NotFittedError(RuntimeError):
    """Raised when a detector that needs fitting is used before :meth:`OODDetector.fit`."""


class OODOutput(NamedTuple):
    """What a detector returns.

    Attributes:
        image_score: ``(B,)`` float tensor, higher = more OOD.
        anomaly_map: ``(B, 1, *spatial)`` float32 tensor for detectors that produce maps, else ``None``.
        extras: optional named tensors that explain the score (e.g. NERO's neuron relevance ``(B, D)``).
    """

    image_score: Tensor
    anomaly_map: Tensor | None = None
    extras: dict[str, Tensor] | None = None


class OODDetector(nn.Module, ABC):
    """Base class of every OOD / anomaly detector.

    Subclasses set the class attributes and implement :meth:`score_features`; detectors that need fitting
    implement :meth:`partial_fit_features` (and usually :meth:`reset_fit` / :meth:`finalize_fit`).

    Attributes:
        name: registry name, set by :func:`~medood.detectors.registry.register_detector`.
        requires_fit: ``score`` raises :class:`NotFittedError` until ``fit`` has run.
        requires_training: the detector owns networks trained by an Ignite engine (``medood.engines``).
        produces_map: ``predict_map`` returns a voxel-wise anomaly map.
        supported_spatial_dims: spatial dimensionalities of the inputs the detector accepts.
        needs_input_grad: scoring needs gradients with respect to the input (e.g. ODIN's perturbation), so
            precomputed features are not enough: batch scorers call :meth:`score` on the images instead of
            :meth:`score_features`.
    """

    name: ClassVar[str] = ""
    requires_fit: ClassVar[bool] = True
    requires_training: ClassVar[bool] = False
    produces_map: ClassVar[bool] = False
    supported_spatial_dims: ClassVar[tuple[int, ...]] = (2, 3)
    needs_input_grad: ClassVar[bool] = False
    _fitted: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_fitted", torch.zeros((), dtype=torch.bool))
        self.calibration = Calibration()

    # ------------------------------------------------------------------ state
    @property
    def is_fitted(self) -> bool:
        """Whether the detector can score (always ``True`` for detectors with ``requires_fit = False``)."""
        return (not self.requires_fit) or bool(self._fitted)

    @property
    def device(self) -> torch.device:
        """The device of the detector's parameters and buffers."""
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def check_fitted(self) -> None:
        """Raise :class:`NotFittedError` if the detector has not been fitted."""
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} must be fitted before scoring: call fit(loader) or fit_features(...) first,"
                " or load a fitted state_dict"
            )

    def _set_fitted(self, value: bool = True) -> None:
        self._fitted.fill_(value)

    def mark_fitted(self) -> OODDetector:
        """Declare the detector fitted after its networks were trained outside :meth:`fit`.

        Bundles train the networks in stages; the flag is saved with the weights.
        """
        self._set_fitted()
        return self

    def _load_from_state_dict(  # type: ignore[override]
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        # Fitted statistics have data-dependent shapes (class means, PCA bases, memory banks): an unfitted
        # detector holds empty placeholders, so resize every own buffer to the incoming shape before loading.
        for name, buf in self._buffers.items():
            key = prefix + name
            if buf is not None and key in state_dict and state_dict[key].shape != buf.shape:
                incoming = state_dict[key]
                self._buffers[name] = torch.empty(incoming.shape, dtype=incoming.dtype, device=buf.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ fitting
    def extract_features(self, x: Tensor) -> dict[str, Tensor]:
        """Turn a batch of images into the features :meth:`score_features` consumes.

        The default passes the image through (``{"image": x}``), which suits detectors that work on images
        directly (reconstruction, MIM). Post-hoc detectors run their host network here.
        """
        return {OODKeys.IMAGE.value: x}

    def reset_fit(self) -> None:
        """Clear running fit statistics before a new fit. The default does nothing."""

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Accumulate statistics from one batch of features. Detectors that need fitting override this."""
        if self.requires_fit:
            raise NotImplementedError(
                f"{type(self).__name__} needs fitting but does not implement partial_fit_features"
            )

    def finalize_fit(self) -> None:
        """Turn the accumulated statistics into buffers. The default does nothing."""

    def fit(self: Self, loader: Iterable[Any]) -> Self:
        """Fit on in-distribution data, streaming over ``loader`` once.

        Args:
            loader: an iterable of batches (tensors, ``{"image", "label"}`` dicts or ``(image, label)`` tuples).

        Returns:
            ``self``, fitted.
        """
        self.reset_fit()
        n_batches = 0
        with torch.no_grad():
            for batch in loader:
                x, y = unpack_batch(batch)
                x = as_plain_tensor(x).to(self.device)
                self.partial_fit_features(self.extract_features(x), None if y is None else y.to(self.device))
                n_batches += 1
        if n_batches == 0 and self.requires_fit:
            raise ValueError(f"{type(self).__name__}.fit got an empty loader: no in-distribution data to fit on")
        self.finalize_fit()
        self._set_fitted()
        logger.info("%s fitted on %d batches", type(self).__name__, n_batches)
        return self

    def fit_features(self: Self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> Self:
        """Fit on precomputed features of the whole in-distribution training set.

        Args:
            features: mapping of feature name to ``(N, ...)`` tensors.
            labels: ``(N,)`` class labels, for class-conditional detectors.

        Returns:
            ``self``, fitted.
        """
        self.reset_fit()
        with torch.no_grad():
            self.partial_fit_features(features, labels)
        self.finalize_fit()
        self._set_fitted()
        return self

    # ------------------------------------------------------------------ scoring
    @abstractmethod
    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score precomputed features. Higher = more OOD."""

    def score(self, batch: Tensor | Mapping[str, Any] | tuple | list) -> OODOutput:
        """Score a batch of images. Higher = more OOD.

        Raises:
            NotFittedError: the detector needs fitting and has not been fitted.
        """
        self.check_fitted()
        x, _ = unpack_batch(batch)
        x = as_plain_tensor(x)
        self._check_input(x)
        with torch.no_grad():
            return self.score_features(self.extract_features(x.to(self.device)))

    def predict_map(self, x: Tensor) -> Tensor:
        """Return the voxel-wise anomaly map ``(B, 1, *spatial)`` (float32) for detectors that make maps.

        Raises:
            NotImplementedError: the detector gives image-level scores only.
        """
        if not self.produces_map:
            raise NotImplementedError(f"{type(self).__name__} produces image-level scores only, not maps")
        out = self.score(x)
        assert out.anomaly_map is not None
        return out.anomaly_map

    def forward(self, x: Tensor) -> Tensor:
        """Anomaly map for map-producing detectors (what ``SlidingWindowInferer`` stitches), else ``(B,)`` scores."""
        if self.produces_map:
            return self.predict_map(x)
        return self.score(x).image_score

    def _check_input(self, x: Tensor) -> None:
        spatial = x.ndim - 2
        if spatial not in self.supported_spatial_dims:
            raise ValueError(
                f"{type(self).__name__} supports {self.supported_spatial_dims}-D inputs of shape (B, C, *spatial), "
                f"got a tensor of shape {tuple(x.shape)}"
            )

    # ------------------------------------------------------------------ thresholds
    def foreground_mask(self, x: Tensor) -> Tensor | None:
        """Voxels whose map values count for calibration (``None`` = all). Brain detectors use the brain mask."""
        return None

    def calibrate(self, loader: Iterable[Any], max_values: int = 1_000_000, seed: int = 0) -> Calibration:
        """Record the distribution of scores and map values on healthy / in-distribution validation data.

        The quantiles are stored with the weights; :meth:`threshold` reads them. Use data the detector was
        not fitted on.

        Args:
            loader: in-distribution validation batches.
            max_values: bound on the map values kept (a seeded uniform subsample per batch).
            seed: seed of that subsample.
        """
        self.check_fitted()
        scores, values = [], []
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for batch in loader:
                x, _ = unpack_batch(batch)
                out = self.score(x)
                scores.append(out.image_score.detach().float().cpu())
                if out.anomaly_map is not None:
                    m = out.anomaly_map.detach().float().cpu()
                    fg = self.foreground_mask(x.to(self.device))
                    v = m[fg.cpu().expand_as(m)] if fg is not None else m.reshape(-1)
                    if v.numel() > max_values // 4:
                        v = v[torch.randperm(v.numel(), generator=gen)[: max_values // 4]]
                    values.append(v)
        if not scores:
            raise ValueError("calibrate got an empty loader")
        map_values = torch.cat(values) if values else None
        if map_values is not None and map_values.numel() > max_values:
            map_values = map_values[torch.randperm(map_values.numel(), generator=gen)[:max_values]]
        self.calibration.update(torch.cat(scores), map_values)
        return self.calibration

    def threshold(self, percentile: float = 99.0, kind: str = "map") -> float:
        """A threshold taken from the recorded in-distribution distribution.

        Args:
            percentile: in ``[0, 100]``. Defaults to 99 (1 % of healthy voxels / images flagged).
            kind: ``"map"`` (voxel values) or ``"score"`` (image scores).

        Raises:
            RuntimeError: :meth:`calibrate` has not been run.
        """
        return self.calibration.quantile(percentile / 100.0, kind=kind)
