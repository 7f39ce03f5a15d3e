"""The inference step of a detector run: the whole-input anomaly map, its volume score and its slice scores.

MONAI stitches only spatial outputs, so a map-producing detector's ``forward`` returns its map ``(B, 1, *patch)``
and :class:`OODInferer` runs it on the whole input at once, patch-wise (MONAI ``SlidingWindowInferer``) or slice by
slice (MONAI ``SliceInferer``). It is also the one place that turns maps into scores on the inference path:
the volume score is the detector's own :meth:`~medood.detectors.base.OODDetector.map_score` (the method defines
it), the slice scores the reduction configured here; :class:`~medood.engines.OODEvaluator` calls both once and
carries the results in the engine output, and the writers only write them.

Detectors whose map only explains a score computed otherwise (``score_from_map = False``, e.g. MECAM's class
activation map) score whole inputs: the inferer calls their ``score`` once per batch, returns the map and hands the
image score of that same call to :meth:`OODInferer.inferred_score` (no second scoring pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer, SliceInferer, SlidingWindowInferer
from torch import Tensor

from medood.detectors.base import OODDetector
from medood.utils.enums import MapReduction
from medood.utils.reduce import reduce_map, reduce_slices

__all__ = ["OODInferenceResult", "OODInferer"]


class OODInferenceResult(NamedTuple):
    """Map, volume score and slice scores of one batch.

    Attributes:
        anomaly_map: ``(B, 1, *spatial)`` float32.
        volume_score: ``(B,)``, higher = more anomalous.
        slice_scores: spatial axis -> ``(B, n_slices)``.
    """

    anomaly_map: Tensor
    volume_score: Tensor
    slice_scores: dict[int, Tensor]


class OODInferer(Inferer):
    """Anomaly maps over whole inputs, and their volume and slice scores.

    Args:
        roi_size: patch size for sliding-window inference; ``None`` (default) runs the network on the whole
            input at once (right for detectors that take a full, fixed-size field of view themselves).
        sw_batch_size: patches per network call. Defaults to 4.
        overlap: patch overlap. Defaults to 0.25.
        mode: patch blending, ``"gaussian"`` (removes seams in residual maps) or ``"constant"``.
            Defaults to ``"gaussian"``.
        slice_axis: run a **2D** network slice by slice over a 3D volume along this spatial axis (MONAI
            ``SliceInferer``); ``roi_size`` is then the 2D patch size (or ``None`` for whole slices).
            Defaults to ``None`` (the network matches the input dimensionality).
        slice_axes: spatial axes of the slice scores. In a bundle run they are computed on the map after
            ``Invertd``, so they are the input file's voxel axes. Defaults to ``(-1,)``.
        slice_reduction: slice-score reduction, ``"max"``, ``"mean"`` or ``"topk"``. Defaults to ``"topk"``.
        slice_k: top-k count or fraction of each slice's voxels. Defaults to 0.01.
        **sw_kwargs: forwarded to MONAI's ``SlidingWindowInferer`` (``sw_device``, ``device``, ``progress`` ...).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int | None = None,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        mode: str = "gaussian",
        slice_axis: int | None = None,
        slice_axes: Sequence[int] = (-1,),
        slice_reduction: str = "topk",
        slice_k: int | float = 0.01,
        **sw_kwargs: Any,
    ) -> None:
        super().__init__()
        MapReduction(slice_reduction)  # validate early
        self.slice_axes = tuple(slice_axes)
        self.slice_reduction, self.slice_k = slice_reduction, slice_k
        self.slice_axis = slice_axis
        self._pending: tuple[Tensor, Tensor] | None = None  # (map, image score) of an explanation-map detector
        self._inner: Inferer
        if slice_axis is not None:
            self._inner = SliceInferer(
                spatial_dim=slice_axis,
                roi_size=roi_size if roi_size is not None else (-1, -1),
                sw_batch_size=sw_batch_size,
                overlap=overlap,
                mode=mode,
                **sw_kwargs,
            )
        elif roi_size is None:
            self._inner = SimpleInferer()
        else:
            self._inner = SlidingWindowInferer(
                roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, **sw_kwargs
            )

    def __call__(self, inputs: Tensor, network: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
        """The stitched anomaly map ``(B, 1, *spatial)`` (the MONAI ``Inferer`` interface, for evaluators)."""
        det = _detector(network)
        if det is not None and det.produces_map and not det.score_from_map:
            out = self._explained(inputs, det)
        else:
            out = self._inner(inputs, network, *args, **kwargs)
        if not isinstance(out, Tensor):
            raise TypeError(f"the network must return one anomaly map tensor, got {type(out).__name__}")
        if out.ndim != inputs.ndim or out.shape[1] != 1 or out.shape[2:] != inputs.shape[2:]:
            raise ValueError(
                f"anomaly map shape {tuple(out.shape)} does not match the input {tuple(inputs.shape)} "
                "(expected (B, 1, *spatial))"
            )
        out = out.float()
        if isinstance(inputs, MetaTensor) and not isinstance(out, MetaTensor):  # the map is on the input's grid
            out = MetaTensor(out)
            out.copy_meta_from(inputs)  # its metadata and transform trace: Invertd takes the map back
        if self._pending is not None:
            self._pending = (out, self._pending[1])
        return out

    def _explained(self, inputs: Tensor, det: OODDetector) -> Tensor:
        """One ``score`` call of a detector whose map explains its score; the score waits for ``inferred_score``."""
        if not isinstance(self._inner, SimpleInferer):
            raise ValueError(
                f"{type(det).__name__} scores whole inputs (its map explains the score, score_from_map=False): "
                "use OODInferer(roi_size=None) without slice_axis"
            )
        result = det.score(inputs)
        if result.anomaly_map is None:
            raise TypeError(f"{type(det).__name__}.score returned no map although produces_map is True")
        self._pending = (result.anomaly_map, result.image_score)
        return result.anomaly_map

    @staticmethod
    def volume_score(anomaly_map: Tensor, inputs: Tensor, network: Any) -> Tensor:
        """``(B,)`` volume / image scores: the detector's :meth:`~medood.detectors.base.OODDetector.map_score`.

        For a detector whose map only explains its score (``score_from_map = False``) it is ``score(inputs)``
        (:meth:`inferred_score` reuses the score of the call that made the map instead). A network that is not a
        detector (a plain map network) scores its map's maximum.
        """
        net = _detector(network)
        if net is None:
            return reduce_map(anomaly_map, MapReduction.MAX.value)
        if net.score_from_map:
            return net.map_score(anomaly_map, inputs)
        return net.score(inputs).image_score

    def inferred_score(self, anomaly_map: Tensor, inputs: Tensor, network: Any) -> Tensor:
        """:meth:`volume_score` of a map this inferer has just made (what :class:`~medood.engines.OODEvaluator` calls).

        An explanation-map detector's score is the image score of the ``score`` call that made ``anomaly_map`` in
        :meth:`__call__` (no second scoring pass); any other map goes to :meth:`volume_score`.
        """
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is anomaly_map:
            return pending[1]
        return self.volume_score(anomaly_map, inputs, network)

    def slice_scores(self, anomaly_map: Tensor) -> dict[int, Tensor]:
        """Slice scores ``{axis: (B, n_slices)}`` of maps ``(B, 1, *spatial)`` along every ``slice_axes`` axis."""
        n_spatial = anomaly_map.ndim - 2
        return {
            ax % n_spatial: reduce_slices(anomaly_map, ax, self.slice_reduction, self.slice_k)
            for ax in self.slice_axes
            if n_spatial >= 2
        }

    @torch.no_grad()
    def infer(self, inputs: Tensor, network: Callable[..., Tensor], *args: Any, **kwargs: Any) -> OODInferenceResult:
        """Map, volume score and slice scores of a batch in one call (outside an engine)."""
        amap = self(inputs, network, *args, **kwargs)
        return OODInferenceResult(amap, self.inferred_score(amap, inputs, network), self.slice_scores(amap))


def _detector(network: Any) -> OODDetector | None:
    """The detector behind ``network`` (unwrapping ``DataParallel``), or ``None`` for a plain network."""
    net = getattr(network, "module", network)
    return net if isinstance(net, OODDetector) else None
