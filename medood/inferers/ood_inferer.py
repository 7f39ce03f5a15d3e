"""The inference step of a detector run: per case, one :class:`~medood.io.OODResult`.

MONAI stitches only spatial outputs, so a map-producing detector's ``forward`` returns its map ``(B, 1, *patch)``
and :class:`OODInferer` runs it on the whole input at once, patch-wise (MONAI ``SlidingWindowInferer``) or slice by
slice (MONAI ``SliceInferer``). :meth:`OODInferer.infer` is the one call that gives a batch's map, image score and
extras: it hands the detector the patch-wise map runner and the batch's foreground, and the detector's
:meth:`~medood.detectors.base.OODDetector.infer` decides how its score relates to its map (a reduction of it, or a
score the map only explains, e.g. MECAM). After the postprocessing (``Invertd``: the map on the input's grid),
:meth:`OODInferer.case_result` makes each case's :class:`~medood.io.OODResult`, with the slice scores of the one
slice reduction configured here. :class:`~medood.engines.OODEvaluator` calls both; writers and metric handlers read
the results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer, SliceInferer, SlidingWindowInferer
from torch import Tensor

from medood.detectors.base import OODDetector
from medood.io.result import OODResult
from medood.transforms.foreground import FOREGROUND_KEY
from medood.utils.enums import MapReduction, OODKeys
from medood.utils.io import case_name
from medood.utils.reduce import reduce_map, reduce_slices

__all__ = ["FOREGROUND_KEY", "OODInferenceResult", "OODInferer"]


class OODInferenceResult(NamedTuple):
    """Map, volume score and slice scores of one batch.

    Attributes:
        anomaly_map: ``(B, 1, *spatial)`` float32, or ``None`` for detectors that give image scores only.
        volume_score: ``(B,)``, higher = more anomalous.
        slice_scores: spatial axis -> ``(B, n_slices)``.
        extras: named tensors that explain the score (the detector's ``OODOutput.extras``).
    """

    anomaly_map: Tensor | None
    volume_score: Tensor
    slice_scores: dict[int, Tensor]
    extras: dict[str, Tensor] | None = None


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
        slice_foreground: restrict the slice reduction to the batch's foreground (``foreground`` key) when present.
            Defaults to ``False`` (every voxel of the slice counts; maps are 0 outside the foreground anyway).
        map_kind: the map's kind in the run folder's file names (``anomaly``, ``cam``, ``heatmap`` ...); set on
            every result. Defaults to ``"anomaly"``.
        case_key: a batch field naming the case (e.g. ``"case"`` for arrays without a file); ``None`` names cases
            after the input file. Defaults to ``None``.
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
        slice_foreground: bool = False,
        map_kind: str = "anomaly",
        case_key: str | None = None,
        **sw_kwargs: Any,
    ) -> None:
        super().__init__()
        MapReduction(slice_reduction)  # validate early
        self.slice_axes = tuple(slice_axes)
        self.slice_reduction, self.slice_k = slice_reduction, slice_k
        self.slice_axis, self.slice_foreground = slice_axis, slice_foreground
        self.map_kind, self.case_key = map_kind, case_key
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
        """The stitched anomaly map ``(B, 1, *spatial)`` (the MONAI ``Inferer`` interface)."""
        out = self.infer(inputs, network, *args, **kwargs).anomaly_map
        if out is None:
            raise TypeError(f"{type(_detector(network)).__name__} produces image scores only, no map")
        return out

    def _as_map(self, out: Any, inputs: Tensor) -> Tensor:
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
        return out

    @torch.no_grad()
    def infer(
        self,
        inputs: Tensor,
        network: Callable[..., Tensor],
        *args: Any,
        foreground: Tensor | None = None,
        with_slices: bool = True,
        **kwargs: Any,
    ) -> OODInferenceResult:
        """Map, image score, slice scores and extras of a batch in one pass (no second scoring pass).

        Args:
            inputs: the preprocessed batch ``(B, C, *S)``.
            network: a detector (its :meth:`~medood.detectors.base.OODDetector.infer` decides the score) or a plain
                map network (scored by its map's maximum).
            foreground: the batch's boolean foreground ``(B, 1, *S)`` from the preprocessing, if any.
            *args: forwarded to the network (MONAI ``Inferer`` interface).
            with_slices: compute the slice scores on this grid (an evaluator computes them per case after
                ``Invertd`` instead, with :meth:`case_result`). Defaults to ``True``.
            **kwargs: forwarded to the network.
        """
        det = _detector(network)

        def make_map(x: Tensor) -> Tensor:
            return self._inner(x, network, *args, **kwargs)

        if det is None:  # a plain network: image scores (B,), or a map scored by its maximum
            out = make_map(inputs)
            if isinstance(out, Tensor) and out.ndim == 1:
                amap, score, extras = None, out.float(), None
            else:
                amap = self._as_map(out, inputs)
                score, extras = reduce_map(amap, MapReduction.MAX.value, mask=foreground), None
        else:
            whole = isinstance(self._inner, SimpleInferer)  # the detector runs on the whole input itself
            found = det.infer(inputs, None if whole else make_map, foreground)
            amap = None if found.anomaly_map is None else self._as_map(found.anomaly_map, inputs)
            score, extras = found.image_score.float(), found.extras
        fg = foreground if self.slice_foreground else None
        slices = {} if amap is None or not with_slices else self.slice_scores(amap, fg)
        return OODInferenceResult(amap, score, slices, extras)

    @staticmethod
    def volume_score(anomaly_map: Tensor, inputs: Tensor, network: Any, foreground: Tensor | None = None) -> Tensor:
        """``(B,)`` image scores of maps made outside this inferer (e.g. by MONAI Label's own inference).

        The detector decides (:meth:`~medood.detectors.base.OODDetector.infer` given this map); a plain network's
        map scores its maximum.
        """
        det = _detector(network)
        if det is None:
            return reduce_map(anomaly_map, MapReduction.MAX.value, mask=foreground)
        return det.infer(inputs, foreground=foreground, anomaly_map=anomaly_map).image_score

    def slice_scores(self, anomaly_map: Tensor, foreground: Tensor | None = None) -> dict[int, Tensor]:
        """Slice scores ``{axis: (B, n_slices)}`` of maps ``(B, 1, *spatial)`` along every ``slice_axes`` axis.

        The one slice reduction of a run (``slice_reduction`` / ``slice_k``, over ``foreground`` when given).
        """
        n_spatial = anomaly_map.ndim - 2
        return {
            ax % n_spatial: reduce_slices(anomaly_map, ax, self.slice_reduction, self.slice_k, foreground)
            for ax in self.slice_axes
            if n_spatial >= 2
        }

    def case_result(
        self, item: Mapping[str, Any], batch_item: Mapping[str, Any] | None = None, label_key: str | None = None
    ) -> OODResult:
        """One case's :class:`~medood.io.OODResult` from a decollated, postprocessed engine output item.

        Args:
            item: ``{"pred": map (1, *S) on the input grid, or the image score, "ood_score": score, ...}``.
            batch_item: the case's batch entry (case field, labels, the inverted foreground), when separate.
            label_key: the field holding the ground truth (1 = OOD / anomalous), if any.
        """
        batch_item = batch_item or {}
        pred, score = item.get("pred"), item.get(OODKeys.SCORE.value)
        if score is None:
            raise KeyError("the engine output has no 'ood_score' (run an OODEvaluator)")
        amap = pred if isinstance(pred, Tensor) and pred.ndim >= 3 else None
        meta = getattr(amap if amap is not None else item.get(OODKeys.IMAGE.value), "meta", None) or {}
        named = None if self.case_key is None else item.get(self.case_key, batch_item.get(self.case_key))
        source = meta.get("filename_or_obj")
        if named is not None:
            case = str(_scalar(named)).replace("/", "_")
        elif source:
            case = case_name(str(source))
        else:
            case = ""
        fg = item.get(FOREGROUND_KEY, batch_item.get(FOREGROUND_KEY))
        fg = fg.bool() if isinstance(fg, Tensor) and amap is not None and fg.shape[1:] == amap.shape[1:] else None
        slices: dict[int, Tensor] = {}
        if amap is not None and amap.ndim >= 3:
            use = fg[None] if fg is not None and self.slice_foreground else None
            slices = {ax: v[0] for ax, v in self.slice_scores(torch.as_tensor(amap)[None].float(), use).items()}
        label = None
        if label_key is not None:
            lab = item.get(label_key, batch_item.get(label_key))
            label = None if lab is None else int(_scalar(lab))
        extras = {k: v for k, v in item.items() if k.startswith("extra_")}
        return OODResult(
            case=case, score=float(_scalar(score)), anomaly_map=amap, slice_scores=slices, label=label,
            image=None if not source else str(source), foreground=fg, map_kind=self.map_kind, extras=extras,
        )  # fmt: skip


def _scalar(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.detach().reshape(-1)[0].item()
    if isinstance(v, np.ndarray | list | tuple):
        return np.asarray(v).reshape(-1)[0].item()
    return v


def _detector(network: Any) -> OODDetector | None:
    """The detector behind ``network`` (unwrapping ``DataParallel``), or ``None`` for a plain network."""
    net = getattr(network, "module", network)
    return net if isinstance(net, OODDetector) else None
