"""MONAI transforms for bundle configs: validated loading and validation of already-loaded images.

- :class:`LoadVolume` / :class:`LoadVolumed`: NIfTI loading with :func:`medood.data.load_volume` (use instead of
  ``LoadImaged`` to get a :class:`~medood.data.errors.DataError` naming the file for every bad input).
- :class:`LoadImage2D` / :class:`LoadImage2Dd`: 2D loading with :func:`medood.data.read_image_2d`, ``(C, H, W)``.
- :class:`LoadDicomSeriesd`: a DICOM folder per item with :func:`medood.data.load_dicom_series`.
- :class:`ValidateImage` / :class:`ValidateImaged`: checks after any loader (e.g. MONAI's ``LoadImaged``):
  spatial dimensionality, channel count (catches a 4D multi-sequence file loaded as channels), NaN/Inf voxels
  and constant images.

Inside a MONAI ``Compose`` / ``Dataset`` the error reaches the caller as MONAI's
``RuntimeError("applying transform ...")`` whose ``__cause__`` is the :class:`DataError` (the traceback shows
both); set ``MONAI_DEBUG=1`` to get the :class:`DataError` itself.

Example (bundle YAML)::

    preprocessing:
      _target_: Compose
      transforms:
      - {_target_: medood.data.transforms.LoadVolumed, keys: image}
      - {_target_: Orientationd, keys: image, axcodes: RAS}
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medood.data.dicom import load_dicom_series
from medood.data.errors import DataError
from medood.data.image2d import read_image_2d
from medood.data.readers import check_volume, load_volume

__all__ = [
    "LoadDicomSeriesd",
    "LoadImage2D",
    "LoadImage2Dd",
    "LoadVolume",
    "LoadVolumed",
    "ValidateImage",
    "ValidateImaged",
]


class LoadVolume(Transform):
    """Load a NIfTI file with :func:`~medood.data.readers.load_volume`: a float32 ``(C, X, Y, Z)`` MetaTensor.

    Args:
        expect_3d: require a single 3D volume. Defaults to ``True``.
        allow_nonfinite: accept NaN/Inf voxels with a warning. Defaults to ``False``.
        allow_constant: accept constant volumes with a warning. Defaults to ``False``.
        max_bytes: memory budget of one decoded volume. Defaults to ``None`` (``$MEDOOD_MAX_IMAGE_BYTES``, else
            4 GiB).
    """

    def __init__(
        self,
        expect_3d: bool = True,
        allow_nonfinite: bool = False,
        allow_constant: bool = False,
        max_bytes: int | None = None,
    ) -> None:
        self.expect_3d = expect_3d
        self.allow_nonfinite = allow_nonfinite
        self.allow_constant = allow_constant
        self.max_bytes = max_bytes

    def __call__(self, path: Any) -> MetaTensor:
        """Load ``path``."""
        return load_volume(path, self.expect_3d, self.allow_nonfinite, self.allow_constant, self.max_bytes)


class LoadImage2D(Transform):
    """Load a PNG/JPEG/TIFF/BMP file with :func:`~medood.data.image2d.read_image_2d`: float32 ``(C, H, W)``.

    Args:
        scale: scale 8-/16-bit images to ``[0, 1]``. Defaults to ``False``.
    """

    def __init__(self, scale: bool = False) -> None:
        self.scale = scale

    def __call__(self, path: Any) -> MetaTensor:
        """Load ``path``."""
        return read_image_2d(path, scale=self.scale)


class ValidateImage(Transform):
    """Check a loaded channel-first image and return it unchanged; raise :class:`DataError` naming its file.

    Args:
        spatial_dims: required number of spatial dimensions (2 or 3); a 3D image with a single slice counts
            as 2D. Defaults to ``None`` (not checked).
        channels: required number of channels. ``1`` rejects a 4D multi-sequence NIfTI that ``LoadImaged``
            turned into channels. Defaults to ``None`` (not checked).
        allow_nonfinite: accept NaN/Inf values with a warning. Defaults to ``False``.
        allow_constant: accept a constant image with a warning. Defaults to ``False``.
    """

    def __init__(
        self,
        spatial_dims: int | None = None,
        channels: int | None = None,
        allow_nonfinite: bool = False,
        allow_constant: bool = False,
    ) -> None:
        if spatial_dims not in (None, 2, 3):
            raise ValueError(f"spatial_dims must be None, 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.allow_nonfinite = allow_nonfinite
        self.allow_constant = allow_constant

    @staticmethod
    def _source(img: Any) -> str:
        if isinstance(img, MetaTensor):
            name = img.meta.get("filename_or_obj")
            if name:
                return str(name)
        return "<in-memory image>"

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Validate ``img`` (channel-first) and return it."""
        source = self._source(img)
        shape = tuple(int(s) for s in img.shape)
        if len(shape) < 3:
            raise DataError(source, f"has shape {shape}: expected channel-first (C, *spatial) with 2 or 3 spatial dims")
        channels, spatial = shape[0], shape[1:]
        if self.channels is not None and channels != self.channels:
            extra = " (a 4D multi-volume file? see medood.data.split_4d)" if len(spatial) == 3 else ""
            raise DataError(source, f"has {channels} channels, expected {self.channels}{extra}")
        if self.spatial_dims == 3 and (len(spatial) != 3 or min(spatial) == 1):
            raise DataError(source, f"has spatial shape {spatial} (2D or a single slice), expected a 3D volume")
        if self.spatial_dims == 2 and not (len(spatial) == 2 or (len(spatial) == 3 and spatial[-1] == 1)):
            raise DataError(source, f"has spatial shape {spatial}, expected a 2D image")
        check_volume(img, source, allow_nonfinite=self.allow_nonfinite, allow_constant=self.allow_constant)
        return img


class _LoadMapTransform(MapTransform):
    """Apply a per-key loader to every key."""

    loader: Transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every key of ``data`` in place of its path."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class LoadVolumed(_LoadMapTransform):
    """Dictionary version of :class:`LoadVolume`.

    Args:
        keys: keys holding NIfTI paths.
        expect_3d: require a single 3D volume. Defaults to ``True``.
        allow_nonfinite: accept NaN/Inf voxels with a warning. Defaults to ``False``.
        allow_constant: accept constant volumes with a warning. Defaults to ``False``.
        allow_missing_keys: do not raise for absent keys. Defaults to ``False``.
        max_bytes: memory budget of one decoded volume. Defaults to ``None`` (``$MEDOOD_MAX_IMAGE_BYTES``, else
            4 GiB).
    """

    def __init__(
        self,
        keys: KeysCollection,
        expect_3d: bool = True,
        allow_nonfinite: bool = False,
        allow_constant: bool = False,
        allow_missing_keys: bool = False,
        max_bytes: int | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadVolume(expect_3d, allow_nonfinite, allow_constant, max_bytes)


class LoadImage2Dd(_LoadMapTransform):
    """Dictionary version of :class:`LoadImage2D`.

    Args:
        keys: keys holding 2D image paths.
        scale: scale 8-/16-bit images to ``[0, 1]``. Defaults to ``False``.
        allow_missing_keys: do not raise for absent keys. Defaults to ``False``.
    """

    def __init__(self, keys: KeysCollection, scale: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage2D(scale)


class LoadDicomSeriesd(MapTransform):
    """Load a DICOM series (folder or list of files) per key with :func:`~medood.data.dicom.load_dicom_series`.

    Args:
        keys: keys holding a DICOM folder or a list of files.
        allow_missing_keys: do not raise for absent keys. Defaults to ``False``.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every key of ``data`` in place of its folder."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_dicom_series(d[key])
        return d


class ValidateImaged(MapTransform):
    """Dictionary version of :class:`ValidateImage`.

    Args:
        keys: keys holding loaded channel-first images.
        spatial_dims: required number of spatial dimensions. Defaults to ``None``.
        channels: required number of channels. Defaults to ``None``.
        allow_nonfinite: accept NaN/Inf values with a warning. Defaults to ``False``.
        allow_constant: accept constant images with a warning. Defaults to ``False``.
        allow_missing_keys: do not raise for absent keys. Defaults to ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int | None = None,
        channels: int | None = None,
        allow_nonfinite: bool = False,
        allow_constant: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.validator = ValidateImage(spatial_dims, channels, allow_nonfinite, allow_constant)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Validate every key of ``data`` and return a shallow copy."""
        d = dict(data)
        for key in self.key_iterator(d):
            self.validator(d[key])
        return d
