"""How a detector's anomaly map becomes its image / volume score: the :class:`MapScoring` part of the detector contract.

:class:`~medood.detectors.base.OODDetector` inherits it; the reduction itself is :func:`medood.utils.reduce.reduce_map`.
The class attributes below are documented with :class:`~medood.detectors.base.OODDetector`.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from medood.utils.reduce import reduce_map

__all__ = ["MapScoring"]


class MapScoring(nn.Module):
    """Mixin of :class:`~medood.detectors.base.OODDetector`: the map, its foreground and the one map -> score rule."""

    produces_map: ClassVar[bool] = False
    score_from_map: ClassVar[bool] = True
    score_reduction: str = "topk"
    score_k: int | float = 0.001

    def foreground_mask(self, x: Tensor) -> Tensor | None:
        """The voxels that count for the image score (``None`` = all). Brain detectors use the brain mask."""
        return None

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
