"""The detector contract shared by every medood method (the registry is in :mod:`medood.detectors.registry`).

**Score: higher = more OOD / more anomalous.** OOD is the positive class in every metric; where a paper's
score has the opposite sign (MSP, Energy, MECAM, ...), the detector converts it. Two ways in:

* ``fit(loader)`` / ``score(batch)`` run the host network (or the detector's own networks) on images;
* ``fit_features(features, labels)`` / ``score_features(features)`` take precomputed features (a mapping of
  name -> tensor, e.g. ``{"features": ..., "logits": ...}``), so one backbone pass feeds many detectors.

Fitting has two parts, both driven by ``fit(loader)``:

* **training** of the detector's own networks: a trained detector declares its stages as data
  (:meth:`OODDetector.training_stages`, :class:`~medood.detectors.stages.TrainingStage`) and ``fit`` hands them
  to the ``trainer`` its caller gives (:func:`medood.engines.fit_detector`); no detector imports the engines and
  nothing is registered globally;
* **statistics**, streamed: :meth:`OODDetector.partial_fit_features` once per batch and
  :meth:`OODDetector.finalize_fit` at the end, so memory does not grow with the number of training images.

Fitted state lives in registered buffers: ``state_dict()`` round-trips it and checkpoints load with
``torch.load(..., weights_only=True)``.

Thresholds come from in-distribution data only: the :class:`~medood.detectors.calibration.Calibration` submodule
(saved with the weights; recorded by :class:`medood.handlers.CalibrationHandler` on healthy validation data).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from medood.detectors._maps import MapScoring, OODOutput
from medood.detectors.calibration import Calibration
from medood.detectors.stages import DeclaresStages, Trainer
from medood.utils.batch import as_plain_tensor, unpack_batch
from medood.utils.enums import OODKeys
from medood.utils.modules import ResizableBuffers

__all__ = [
    "NotFittedError",
    "OODDetector",
    "OODOutput",
]

logger = logging.getLogger(__name__)

Self = TypeVar("Self", bound="OODDetector")


class NotFittedError(RuntimeError):
    """Raised when a detector that needs fitting is used before :meth:`OODDetector.fit`."""


class OODDetector(ResizableBuffers, DeclaresStages, MapScoring, nn.Module, ABC):
    """Base class of every OOD / anomaly detector.

    Subclasses set the class attributes and implement :meth:`score_features`; detectors that need fitting
    implement :meth:`partial_fit_features` (and usually :meth:`reset_fit` / :meth:`finalize_fit`).

    Attributes:
        name: registry name, set by :func:`~medood.detectors.registry.register_detector`.
        requires_fit: ``score`` raises :class:`NotFittedError` until ``fit`` has run.
        requires_training: the detector owns networks; :meth:`training_stages` declares how they are trained.
        produces_map: ``predict_map`` returns a voxel-wise anomaly map.
        needs_model: the constructor takes a host classifier ``model`` (post-hoc detectors).
        needs_input_grad: scoring differentiates w.r.t. the input (ODIN): batch scorers call :meth:`score` on images.
        score_from_map: whether the image score is :meth:`map_score` of the map. ``False`` where the map only
            explains a score computed otherwise (MECAM's CAM): no map threshold is recorded for it.
        supported_spatial_dims: spatial dimensionalities of the inputs the detector accepts.
        score_reduction: how a map becomes the image / volume score (``"max"``, ``"mean"``, ``"topk"``); the
            only place this is decided (:meth:`map_score`; the inferer calls it). Defaults to ``"topk"``.
        score_k: top-k count or fraction of the foreground. Defaults to 0.001 (top 0.1 %).
    """

    name: ClassVar[str] = ""
    requires_fit: ClassVar[bool] = True
    requires_training: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False
    needs_input_grad: ClassVar[bool] = False
    supported_spatial_dims: ClassVar[tuple[int, ...]] = (2, 3)
    _fitted: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_fitted", torch.zeros((), dtype=torch.bool))
        self.calibration = Calibration()

    # ------------------------------------------------------------------ state
    @property
    def needs_own_pass(self) -> bool:
        """Batch scorers call :meth:`score` on images, not ``score_features`` on a shared pass (ODIN; multi-layer)."""
        return self.needs_input_grad

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

    def mark_fitted(self, value: bool = True) -> OODDetector:
        """Set the fitted flag (saved with the weights); bundles call it after training the stages one by one."""
        self._fitted.fill_(value)
        return self

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
        """Accumulate statistics from one batch of features. Detectors with fitted statistics override this."""
        if self.requires_fit and not self.training_stages():
            raise NotImplementedError(
                f"{type(self).__name__} needs fitting but does not implement partial_fit_features"
            )

    def finalize_fit(self) -> None:
        """Turn the accumulated statistics into buffers. The default does nothing."""

    @property
    def fits_statistics(self) -> bool:
        """Whether the detector accumulates statistics (it overrides :meth:`partial_fit_features`)."""
        return type(self).partial_fit_features is not OODDetector.partial_fit_features

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """Constructor arguments of a tiny, quickly fitted instance (used by the registry-wide contract test).

        Detectors whose constructor needs more than the defaults (small networks, short training) override it;
        ``needs_model`` detectors get the host classifier from the caller.
        """
        return {}

    def fit(self: Self, loader: Iterable[Any], trainer: Trainer | None = None, **train_options: Any) -> Self:
        """Fit on in-distribution data: train the declared stages, then stream the statistics.

        Args:
            loader: an iterable of batches (tensors, ``{"image", "label"}`` dicts or ``(image, label)`` tuples);
                it must be re-iterable when the detector has training stages.
            trainer: ``trainer(detector, loader, **train_options)`` trains the declared stages
                (:func:`medood.engines.fit_detector`); required when the detector has training stages.
            **train_options: forwarded to ``trainer`` (``epochs``, ``lr``, ``device``, ``stages``, ...).

        Returns:
            ``self``, fitted.
        """
        if self.training_stages():
            self.train_stages(loader, trainer, **train_options)
        if self.fits_statistics:
            self.fit_statistics(loader)
        return self.mark_fitted()  # type: ignore[return-value]

    def fit_statistics(self, loader: Iterable[Any]) -> None:
        """Stream ``loader`` once through ``partial_fit_features`` and ``finalize_fit`` (no training)."""
        self.reset_fit()
        n_batches, was_training = 0, self.training
        self.eval()  # statistics of the networks as they infer (no dropout)
        with torch.no_grad():
            for batch in loader:
                x, y = unpack_batch(batch)
                x = as_plain_tensor(x).to(self.device)
                self.partial_fit_features(self.extract_features(x), None if y is None else y.to(self.device))
                n_batches += 1
        self.train(was_training)
        if n_batches == 0:
            raise ValueError(f"{type(self).__name__}.fit got an empty loader: no in-distribution data to fit on")
        self.finalize_fit()
        logger.info("%s: statistics fitted on %d batches", type(self).__name__, n_batches)

    def fit_features(
        self: Self, features: Mapping[str, Tensor], labels: Tensor | None = None, trainer: Trainer | None = None
    ) -> Self:
        """Fit on precomputed features of the whole in-distribution training set.

        Args:
            features: mapping of feature name to ``(N, ...)`` tensors.
            labels: ``(N,)`` class labels, for class-conditional detectors.
            trainer: the training step of a detector with training stages (see :meth:`fit`).

        Returns:
            ``self``, fitted.
        """
        if self.training_stages():  # trained detectors: the features are images, one in-memory batch
            batch = {**features, **({OODKeys.LABEL.value: labels} if labels is not None else {})}
            return self.fit([batch], trainer=trainer)
        self.reset_fit()
        with torch.no_grad():
            self.partial_fit_features(features, labels)
        self.finalize_fit()
        self.mark_fitted()
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
