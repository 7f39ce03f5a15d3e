"""Stain segmentation labels of immunohistochemistry patches, and 2D images as one-slice 3D volumes.

* :class:`StainLabels` / :class:`StainLabelsd`: per-pixel labels of an RGB haematoxylin-DAB patch by colour
  deconvolution (:func:`skimage.color.rgb2hed`): DAB-positive pixels (optical density above
  :data:`DAB_THRESHOLD`), else haematoxylin-positive pixels (above :data:`HAEMATOXYLIN_THRESHOLD`), else
  background. The thresholds are the ones the demo pathology set labels its patches with.
* :class:`StainDensity` / :class:`StainDensityd`: a single-channel stain-density image ``1 - grey`` (unstained
  glass 0, dense stain towards 1), the input channel of a network shared with single-channel MRI.
* :class:`ImageAsSlab` / :class:`ImageAsSlabd`: ``(C, H, W)`` -> ``(C, H, W, 1)``, so a 3D network whose strides
  and upsampling keep the last axis can segment 2D images and 3D volumes alike.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils.type_conversion import convert_to_tensor

__all__ = [
    "DAB_THRESHOLD",
    "HAEMATOXYLIN_THRESHOLD",
    "ImageAsSlab",
    "ImageAsSlabd",
    "StainDensity",
    "StainDensityd",
    "StainLabels",
    "StainLabelsd",
]

#: Optical density (``rgb2hed`` units) above which a pixel is DAB-positive.
DAB_THRESHOLD = 0.08
#: Optical density above which a pixel is haematoxylin-positive.
HAEMATOXYLIN_THRESHOLD = 0.03


class StainLabels(Transform):
    """``(3, H, W)`` RGB in ``[0, 1]`` -> ``(1, H, W)`` uint8 labels: ``dab_label``, ``haematoxylin_label`` or 0.

    Args:
        haematoxylin_label: label of haematoxylin-positive (nuclei) pixels. Defaults to 1.
        dab_label: label of DAB-positive pixels (takes precedence). Defaults to 2.
    """

    def __init__(self, haematoxylin_label: int = 1, dab_label: int = 2) -> None:
        self.haematoxylin_label, self.dab_label = int(haematoxylin_label), int(dab_label)

    def __call__(self, img: Any) -> torch.Tensor:
        """Label ``img`` (channel-first RGB)."""
        from skimage.color import rgb2hed

        rgb = np.asarray(convert_to_tensor(img, track_meta=False), dtype=np.float32)
        if rgb.ndim != 3 or rgb.shape[0] != 3:
            raise ValueError(f"StainLabels expects a (3, H, W) RGB image, got shape {rgb.shape}")
        hed = rgb2hed(np.clip(np.moveaxis(rgb, 0, -1), 0.0, 1.0))
        labels = np.zeros(rgb.shape[1:], dtype=np.uint8)
        labels[hed[..., 0] > HAEMATOXYLIN_THRESHOLD] = self.haematoxylin_label
        labels[hed[..., 2] > DAB_THRESHOLD] = self.dab_label
        return torch.from_numpy(labels[None])


class StainDensity(Transform):
    """``(C, H, W)`` image in ``[0, 1]`` -> ``(1, H, W)`` float32 ``1 - mean of the colour channels`` (meta kept)."""

    def __call__(self, img: Any) -> torch.Tensor:
        """Convert ``img``."""
        x = convert_to_tensor(img, track_meta=True).float()
        return (1.0 - x[:3].mean(dim=0, keepdim=True)).clamp(0.0, 1.0)  # RGB(A) or grey; alpha ignored


class ImageAsSlab(Transform):
    """``(C, H, W)`` -> ``(C, H, W, 1)``: a 2D image as a one-slice 3D volume (MetaTensor kept)."""

    def __call__(self, img: Any) -> torch.Tensor:
        """Add the trailing axis."""
        x = convert_to_tensor(img, track_meta=True)
        if x.ndim != 3:
            raise ValueError(f"ImageAsSlab expects (C, H, W), got shape {tuple(x.shape)}")
        return x[..., None]


class _PerKey(MapTransform):
    transform: Transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class StainLabelsd(MapTransform):
    """Dictionary version of :class:`StainLabels`: labels of ``keys`` written to ``label_key``.

    Args:
        keys: the RGB image key (one).
        label_key: where the labels go. Defaults to ``"label"``.
        haematoxylin_label: label of haematoxylin-positive pixels. Defaults to 1.
        dab_label: label of DAB-positive pixels. Defaults to 2.
    """

    def __init__(
        self, keys: KeysCollection, label_key: str = "label", haematoxylin_label: int = 1, dab_label: int = 2
    ) -> None:
        super().__init__(keys)
        self.label_key = label_key
        self.transform = StainLabels(haematoxylin_label, dab_label)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the labels."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.label_key] = self.transform(d[key])
        return d


class StainDensityd(_PerKey):
    """Dictionary version of :class:`StainDensity`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = StainDensity()


class ImageAsSlabd(_PerKey):
    """Dictionary version of :class:`ImageAsSlab`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ImageAsSlab()
