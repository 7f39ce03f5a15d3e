"""Whole-image anomaly maps stitched by MONAI's sliding-window (or slice-wise) inferers, plus reductions.

MONAI stitches only spatial outputs, so a map-producing detector's ``forward`` returns its map
``(B, 1, *patch)`` and this inferer stitches it over the whole volume; the slice and volume scores are then
reductions of the stitched map (:mod:`medood.inferers.reduce`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from monai.inferers import Inferer, SimpleInferer, SliceInferer, SlidingWindowInferer
from torch import Tensor

from medood.inferers.reduce import reduce_map, reduce_slices
from medood.utils.enums import MapReduction

__all__ = ["OODInferenceResult", "OODSlidingWindowInferer"]


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


class OODSlidingWindowInferer(Inferer):
    """Stitch anomaly maps over whole images and reduce them to slice and volume scores.

    Args:
        roi_size: patch size for sliding-window inference; ``None`` runs the network on the whole input at
            once (right for detectors that handle a full, fixed-size field of view themselves).
        sw_batch_size: patches per network call. Defaults to 4.
        overlap: patch overlap. Defaults to 0.25.
        mode: blending, ``"gaussian"`` (removes patch seams in residual maps) or ``"constant"``.
            Defaults to ``"gaussian"``.
        slice_axis: run a **2D** network slice by slice over a 3D volume along this spatial axis
            (MONAI ``SliceInferer``; after ``Orientationd("RAS")`` the axial axis is 2). ``roi_size`` is then
            the 2D slice patch size (or ``None`` for whole slices). Defaults to ``None`` (network matches the
            input dimensionality).
        reduction: volume-score reduction, ``"max"``, ``"mean"`` or ``"topk"``. Defaults to ``"topk"``.
        k: top-k count or fraction for the volume score. Defaults to 0.001 (top 0.1 % of foreground voxels).
        slice_axes: spatial axes along which :meth:`infer` also returns slice scores. Defaults to ``(-1,)``.
        slice_reduction: slice-score reduction. Defaults to ``"topk"``.
        slice_k: top-k count or fraction per slice. Defaults to 0.01.
        foreground_fn: optional ``f(inputs) -> bool mask`` restricting the reductions (e.g. the brain).
        **sw_kwargs: forwarded to MONAI's ``SlidingWindowInferer`` (``sw_device``, ``device``, ``progress`` ...).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int | None = None,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        mode: str = "gaussian",
        slice_axis: int | None = None,
        reduction: str = "topk",
        k: int | float = 0.001,
        slice_axes: Sequence[int] = (-1,),
        slice_reduction: str = "topk",
        slice_k: int | float = 0.01,
        foreground_fn: Callable[[Tensor], Tensor | None] | None = None,
        **sw_kwargs: Any,
    ) -> None:
        super().__init__()
        MapReduction(reduction), MapReduction(slice_reduction)  # validate early
        self.reduction, self.k = reduction, k
        self.slice_axes = tuple(slice_axes)
        self.slice_reduction, self.slice_k = slice_reduction, slice_k
        self.foreground_fn = foreground_fn
        self.slice_axis = slice_axis
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
        out = self._inner(inputs, network, *args, **kwargs)
        if not isinstance(out, Tensor):
            raise TypeError(f"the network must return one anomaly map tensor, got {type(out).__name__}")
        if out.ndim != inputs.ndim or out.shape[1] != 1 or out.shape[2:] != inputs.shape[2:]:
            raise ValueError(
                f"anomaly map shape {tuple(out.shape)} does not match the input {tuple(inputs.shape)} "
                "(expected (B, 1, *spatial))"
            )
        return out.float()

    def foreground(self, inputs: Tensor) -> Tensor | None:
        """The foreground mask used by the reductions (``None`` = every voxel)."""
        return None if self.foreground_fn is None else self.foreground_fn(inputs)

    def volume_score(self, anomaly_map: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B,)`` volume / image scores from stitched maps."""
        return reduce_map(anomaly_map, self.reduction, self.k, mask)

    def slice_scores(self, anomaly_map: Tensor, mask: Tensor | None = None) -> dict[int, Tensor]:
        """Slice scores along every configured axis."""
        return {ax: reduce_slices(anomaly_map, ax, self.slice_reduction, self.slice_k, mask) for ax in self.slice_axes}

    @torch.no_grad()
    def infer(self, inputs: Tensor, network: Callable[..., Tensor], *args: Any, **kwargs: Any) -> OODInferenceResult:
        """Map, volume score and slice scores in one call."""
        amap = self(inputs, network, *args, **kwargs)
        mask = self.foreground(inputs)
        return OODInferenceResult(amap, self.volume_score(amap, mask), self.slice_scores(amap, mask))
