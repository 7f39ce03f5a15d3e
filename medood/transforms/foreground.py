"""The foreground of an image, computed once in the preprocessing and carried in the batch as data.

Skull-stripped MRI has an exact-zero background, and medood's intensity normalisation keeps it
(:class:`~medood.transforms.ScaleNonzeroPercentile`), so the foreground is ``|x| > threshold`` over the channels.
:class:`Foregroundd` writes it under ``foreground`` (a ``(1, *spatial)`` uint8 :class:`~monai.data.MetaTensor` with
the image's metadata and transform trace, so MONAI ``Invertd`` takes it back to the input grid with nearest
interpolation). Every consumer reads that key: the volume score's mask
(:meth:`~medood.detectors.base.OODDetector.map_score` via :meth:`~medood.inferers.OODInferer.infer`), the slice
scores (``OODInferer(slice_foreground=True)``) and the written results (:class:`~medood.io.OODResult`).

The one parameter: ``threshold`` (default 0: any non-zero voxel is foreground).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils.type_conversion import convert_to_tensor

__all__ = ["FOREGROUND_KEY", "Foreground", "Foregroundd"]

#: the batch key of the foreground
FOREGROUND_KEY = "foreground"


class Foreground(Transform):
    """``(C, *spatial)`` image -> ``(1, *spatial)`` uint8 foreground, ``max_c |x_c| > threshold``.

    Args:
        threshold: intensity magnitude above which a voxel is foreground. Defaults to 0 (any non-zero voxel).
    """

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = float(threshold)

    def __call__(self, img: Any) -> torch.Tensor:
        """The foreground of ``img``; a MetaTensor input gives a MetaTensor with its metadata and trace."""
        x = convert_to_tensor(img, track_meta=True)
        fg = (x.abs().amax(0, keepdim=True) > self.threshold).to(torch.uint8)
        if isinstance(x, MetaTensor):
            fg = MetaTensor(fg.as_tensor() if isinstance(fg, MetaTensor) else fg)
            fg.copy_meta_from(x)
        return fg


class Foregroundd(MapTransform):
    """Dictionary :class:`Foreground`: ``data[foreground_key] = Foreground(threshold)(data[key])``.

    Put it last in the preprocessing (after resampling, intensity scaling, cropping), so the foreground is on the
    grid the detector sees, exactly ``|x| > threshold`` of the preprocessed image.

    Args:
        keys: the image key (one).
        threshold: see :class:`Foreground`. Defaults to 0.
        foreground_key: where the foreground goes. Defaults to ``"foreground"``.
        allow_missing_keys: as MONAI. Defaults to ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.0,
        foreground_key: str = FOREGROUND_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op, self.foreground_key = Foreground(threshold), foreground_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the foreground of the (first) key's image."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.foreground_key] = self.op(d[key])
            break
        return d
