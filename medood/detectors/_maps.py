"""How a detector's anomaly map becomes its image / volume score: the :class:`MapScoring` part of the detector contract,
and what every detector returns (:class:`OODOutput`, re-exported by :mod:`medood.detectors.base`).

:class:`~medood.detectors.base.OODDetector` inherits it; the reduction itself is :func:`medood.utils.reduce.reduce_map`.
The class attributes below are documented with :class:`~medood.detectors.base.OODDetector`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from medood.utils.reduce import reduce_map

__all__ = ["MapScoring", "OODOutput"]


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


class MapScoring(nn.Module):
    """Mixin of :class:`~medood.detectors.base.OODDetector`: the map, its foreground and the one map -> score rule."""

    produces_map: ClassVar[bool] = False
    score_from_map: ClassVar[bool] = True
    score_reduction: str = "topk"
    score_k: int | float = 0.001

    def foreground_mask(self, x: Tensor) -> Tensor | None:
        """The voxels that count for the image score (``None`` = all). Brain detectors use the brain mask."""
        return None

    def score(self, batch: Any) -> OODOutput:
        """Score a batch of images (implemented by :class:`~medood.detectors.base.OODDetector`)."""
        raise NotImplementedError

    def predict_map(self, x: Tensor) -> Tensor:
        """The ``(B, 1, *S)`` map (implemented by :class:`~medood.detectors.base.OODDetector`)."""
        raise NotImplementedError

    @property
    def map_has_threshold(self) -> bool:
        """Whether healthy map values give a mask threshold (the map defines the score; not an explanation map)."""
        return self.produces_map and self.score_from_map

    def map_score(self, anomaly_map: Tensor, x: Tensor, foreground: Tensor | None = None) -> Tensor:
        """``(B,)`` scores of maps ``(B, 1, *S)``: ``score_reduction`` over ``foreground`` or ``foreground_mask(x)``.

        The one definition of a map detector's image score (``score`` and :meth:`infer` use it); ``foreground`` is
        the batch's, from :class:`medood.transforms.Foregroundd`.

        Raises:
            NotImplementedError: the map explains the score but does not define it (``score_from_map = False``).
        """
        if not self.score_from_map:
            raise NotImplementedError(
                f"{type(self).__name__}'s map explains its score but does not define it: use score(x).image_score"
            )
        mask = foreground.bool() if foreground is not None else self.foreground_mask(x)
        return reduce_map(anomaly_map, self.score_reduction, self.score_k, mask)

    def infer(
        self,
        x: Tensor,
        make_map: Callable[[Tensor], Tensor] | None = None,
        foreground: Tensor | None = None,
        anomaly_map: Tensor | None = None,
    ) -> OODOutput:
        """Score, map and extras in one call (what :class:`medood.inferers.OODInferer` runs).

        The one place that decides how the score relates to the map: a map detector scores :meth:`map_score` of
        ``anomaly_map``, else of ``make_map(x)`` (the inferer's patch / slice run of ``forward``), else of
        :meth:`predict_map`; a detector whose map explains its score (``score_from_map = False``) or that has no map
        returns :meth:`score`.

        Raises:
            ValueError: patch- or slice-wise inference (``make_map``) of a detector that scores whole inputs.
        """
        if self.produces_map and not self.score_from_map and make_map is not None:
            raise ValueError(
                f"{type(self).__name__} scores whole inputs (its map explains the score): "
                "use OODInferer(roi_size=None) without slice_axis"
            )
        if not self.produces_map or not self.score_from_map:
            return self.score(x)
        amap = anomaly_map if anomaly_map is not None else (make_map or self.predict_map)(x)
        return OODOutput(self.map_score(amap, x, foreground), amap)
