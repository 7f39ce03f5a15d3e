"""2D images (PNG, JPEG, TIFF, BMP; grey and RGB; 8- and 16-bit): reading, PNG/overlay writing, 2D NIfTI maps.

**One orientation convention end to end.** Every 2D array in medood is ``(C, H, W)`` = (channel, rows,
columns), as in numpy and PIL: ``image[:, j, i]`` is the pixel in row ``j`` and column ``i``. MONAI's
``PILReader`` swaps rows and columns by default (``reverse_indexing=True``); medood reads every 2D file with
:class:`Image2DReader` (a ``PILReader`` with ``reverse_indexing=False``), so never mix it with a plain
``LoadImage`` on PNG files. In bundle configs use ``LoadImaged(keys=..., reader="medood.data.image2d.Image2DReader")``
or, to get :class:`~medood.data.errors.DataError` messages instead of MONAI's generic ``RuntimeError``,
:class:`medood.data.transforms.LoadImage2Dd`.

Modes: ``1``/``L``/``LA`` load as one grey channel, ``P``/``PA``/``RGB``/``RGBA`` as three RGB channels (the
alpha channel is dropped), ``I;16*``/``I``/``F`` as one channel with their integer or float values. Other modes
(CMYK, YCbCr, LAB, HSV, ...) and multi-frame files are rejected. 48-bit RGB PNGs are reduced to 8 bits by PIL.
Float images with NaN/Inf pixels, and images above the memory budget (from the header, before decoding;
:func:`medood.data._files.max_image_bytes`) or above PIL's decompression-bomb limit, are rejected too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor, PILReader
from PIL import Image

from medood.data._files import (
    PathLike,
    check_memory_budget,
    describe_format,
    read_with_monai,
    require_file,
    sniff_format,
)
from medood.data.errors import DataError
from medood.data.readers import check_volume
from medood.utils.io import atomic_path

__all__ = [
    "IMAGE_2D_SUFFIXES",
    "Image2DReader",
    "overlay_rgb",
    "read_image_2d",
    "read_map_nifti_2d",
    "write_map_nifti_2d",
    "write_overlay_png",
    "write_png",
]

logger = logging.getLogger(__name__)

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_READABLE_KINDS = ("png", "jpeg", "tiff", "bmp")
_KEEP_MODES = {"L", "RGB", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_CONVERT_MODES = {"1": "L", "LA": "L", "La": "L", "P": "RGB", "PA": "RGB", "RGBA": "RGB", "RGBa": "RGB"}
_MODE_MAX = {"L": 255.0, "RGB": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


class _ImageProblem(Exception):
    """Raised inside the PIL converter; turned into a DataError naming the file by the caller."""


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Decode the image fully and convert it to one of the supported modes."""
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1:
        raise _ImageProblem(f"has {frames} frames; only single-frame images are supported")
    img.load()
    mode = img.mode
    if mode in _KEEP_MODES:
        return img
    if mode in _CONVERT_MODES:
        out = img.convert(_CONVERT_MODES[mode])
        out.info["original_mode"] = mode
        return out
    raise _ImageProblem(f"unsupported image mode {mode!r}")


class Image2DReader(PILReader):
    """MONAI ``PILReader`` that keeps numpy/PIL indexing: arrays are ``(H, W[, C])``, channel-first ``(C, H, W)``.

    Differences from ``PILReader``: ``reverse_indexing=False``; ``spatial_shape`` is ``(H, W)``; PNG, JPEG, TIFF
    and BMP suffixes are accepted; palette, bilevel and alpha modes are converted (see the module docstring)
    and unsupported modes or multi-frame files raise.

    Args:
        kwargs: extra arguments for ``PIL.Image.open``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(converter=_normalise_mode, reverse_indexing=False, **kwargs)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Return whether every file name ends with a supported 2D suffix."""
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)  # type: ignore[arg-type]
        return all(str(n).lower().endswith(IMAGE_2D_SUFFIXES) for n in names)

    def _get_spatial_shape(self, img: Image.Image) -> np.ndarray:
        return np.asarray((img.height, img.width))

    def _get_meta_dict(self, img: Image.Image) -> dict:
        meta = super()._get_meta_dict(img)
        meta["original_mode"] = img.info.get("original_mode", img.mode)
        return meta


class _ChannelFirstFloatReader(Image2DReader):
    """What :func:`read_image_2d` reads with: the pixels as one C-contiguous float32 ``(C, H, W)`` array.

    PIL's decoded image is released before the float array is filled, so the peak memory is about 1.25x the
    float32 image (MONAI's path holds the decoded image, a uint8 copy, a channel-last float copy and a
    channel-first one). The meta data is ``Image2DReader``'s; read it with ``channel_first=False``.
    """

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """The channel-first float32 pixels and MONAI's meta data of one PIL image."""
        array, meta = super().get_data(img)
        for i in img if isinstance(img, (list, tuple)) else [img]:
            i.close()  # frees PIL's decoded copy
        chw = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        out = np.empty(chw.shape, dtype=np.float32)
        out[...] = chw
        return out, meta


_PIL_LOCK = threading.Lock()


@contextmanager
def _budget_rules_pil() -> Iterator[None]:
    """PIL's own decompression-bomb limit off while a header is opened: the memory budget rules alone.

    The budget is checked right after, from the header (:func:`_check_header`), so it is the one limit of every
    format; raising it (``$MEDOOD_MAX_IMAGE_BYTES``) lets larger images through.
    """
    with _PIL_LOCK:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _check_header(p: Path, kind: str, max_bytes: int | None) -> None:
    """Open lazily: refuse images above the memory budget; verify a PNG's chunk CRCs and final IEND chunk.

    (Decoding alone does not check them.)
    """
    try:
        with _budget_rules_pil(), Image.open(p) as im:
            channels = 1 if im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;16") else 3
            check_memory_budget(p, (channels, im.height, im.width), max_bytes)
            if kind == "png":
                im.verify()
    except Image.DecompressionBombError as e:
        raise DataError(p, f"is refused by PIL as a possible decompression bomb: {e}") from e


def read_image_2d(path: PathLike, scale: bool = False, max_bytes: int | None = None) -> MetaTensor:
    """Read a PNG/JPEG/TIFF/BMP file as a float32 ``(C, H, W)`` MetaTensor (rows, columns as in PIL/numpy).

    Args:
        path: the image file. Its format is detected from the magic bytes, not the extension.
        scale: divide 8-bit images by 255 and 16-bit images by 65535 so they lie in ``[0, 1]``; 32-bit integer
            and float images are left as they are. Defaults to ``False`` (raw pixel values).
        max_bytes: memory budget of the decoded float32 image. Defaults to ``None``
            (``$MEDOOD_MAX_IMAGE_BYTES``, else 4 GiB).

    Returns:
        A float32 MetaTensor ``(1, H, W)`` (grey) or ``(3, H, W)`` (RGB) with ``meta["mode"]``,
        ``meta["original_mode"]``, ``meta["spatial_shape"] == (H, W)`` and ``meta["filename_or_obj"]``.

    Raises:
        DataError: missing/empty file, wrong magic bytes, truncated or corrupt file, unsupported mode, NaN/Inf
            pixels, an image above the memory budget.
    """
    p = require_file(path)
    kind = sniff_format(p)
    if kind not in _READABLE_KINDS:
        looks = "unrecognised content" if kind == "unknown" else f"it looks like {describe_format(kind)}"
        raise DataError(p, f"wrong magic bytes: not a PNG, JPEG, TIFF or BMP image ({looks})")
    try:
        _check_header(p, kind, max_bytes)
        img = read_with_monai(_ChannelFirstFloatReader(), p, channel_first=False)
    except DataError:
        raise
    except _ImageProblem as e:
        raise DataError(p, str(e), "convert it to a single-frame grey or RGB image, e.g. with PIL") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(p, f"truncated or corrupt {kind.upper()} file: {e}", "re-download or re-export it") from e
    check_volume(img, p, allow_constant=True)
    mode = str(img.meta.get("mode", ""))
    if scale and mode in _MODE_MAX:
        img.as_subclass(torch.Tensor).div_(_MODE_MAX[mode])  # in place: no second float copy
    return img


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_hw(x: Any, name: str) -> np.ndarray:
    """Squeeze ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` to ``(H, W)``."""
    a = _as_numpy(x)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name} must be (H, W), (1, H, W) or (1, 1, H, W), got shape {tuple(_as_numpy(x).shape)}")
    return a


def _as_chw(x: Any, name: str) -> np.ndarray:
    """Return ``(C, H, W)`` with C in (1, 3) from ``(H, W)`` or ``(C, H, W)``."""
    a = _as_numpy(x)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"{name} must be (H, W), (1, H, W) or (3, H, W), got shape {tuple(a.shape)}")
    return a


def _window(a: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Map ``[lo, hi]`` (default: the finite min and max) linearly to ``[0, 1]``, clipping outside values."""
    a = a.astype(np.float64)
    if window is None:
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    else:
        lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        return np.zeros_like(a)
    return np.clip(np.nan_to_num((a - lo) / (hi - lo), nan=0.0), 0.0, 1.0)


def _save_pil(img: Image.Image, path: PathLike) -> Path:
    dest = Path(path)
    with atomic_path(dest) as tmp:
        img.save(tmp, format="PNG")
    return dest


def write_png(image: Any, path: PathLike, window: tuple[float, float] | None = None) -> Path:
    """Write a ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` array as a PNG file (atomically).

    ``uint8`` arrays are written as they are and grey ``uint16`` arrays as 16-bit PNGs, unless ``window`` is
    given. Other dtypes (and any array with a ``window``) are mapped linearly from ``window`` (default: the
    array's min and max) to 0–255 and written as 8-bit.

    Args:
        image: the array, channel-first, numpy or torch.
        path: destination ``.png`` file.
        window: intensity range mapped to black–white. Defaults to ``None``.

    Returns:
        The written path.
    """
    a = _as_chw(image, "image")
    if window is None and a.dtype == np.uint16 and a.shape[0] == 1:
        return _save_pil(Image.fromarray(a[0]), path)
    if window is not None or a.dtype != np.uint8:
        a = np.round(_window(a, window) * 255.0).astype(np.uint8)
    hwc = np.ascontiguousarray(np.moveaxis(a, 0, -1))
    return _save_pil(Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc), path)


def _hot(m: np.ndarray) -> np.ndarray:
    """A heat colour map (red → yellow) for values in [0, 1]; returns ``(H, W, 3)``.

    It stops at yellow: the white top of the classic 'hot' map disappears on a grey MRI slice, so a saturated
    lesion looked unmarked.
    """
    return np.stack([np.clip(0.5 + m, 0, 1), np.clip(2 * m - 0.6, 0, 1), np.zeros_like(m)], axis=-1)


def write_overlay_png(
    image: Any,
    anomaly_map: Any,
    window: tuple[float, float] | None,
    path: PathLike,
    map_range: tuple[float, float] | None = None,
    alpha: float = 0.6,
) -> Path:
    """Blend an anomaly map (hot colour map) over a grey or RGB image and write an 8-bit RGB PNG.

    The map's opacity grows with its value (``alpha * normalised map``), so low-score regions show the image.

    Args:
        image: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``.
        anomaly_map: ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)``, same ``H, W`` as ``image``.
        window: image intensity range shown black–white; ``None`` uses the image's min and max.
        path: destination ``.png`` file (written atomically).
        map_range: map values shown as transparent and as full colour. Defaults to ``None`` (the map's min, max).
        alpha: maximal map opacity in ``[0, 1]``. Defaults to ``0.6``.

    Returns:
        The written path.

    Raises:
        ValueError: the shapes do not match or ``alpha`` is outside ``[0, 1]``.
    """
    return _save_pil(Image.fromarray(overlay_rgb(image, anomaly_map, window, map_range, alpha)), path)


def overlay_rgb(
    image: Any,
    anomaly_map: Any,
    window: tuple[float, float] | None,
    map_range: tuple[float, float] | None = None,
    alpha: float = 0.6,
) -> np.ndarray:
    """The blended ``(H, W, 3)`` uint8 image :func:`write_overlay_png` writes (same arguments, no path)."""
    img = _window(_as_chw(image, "image"), window)
    amap = _as_hw(anomaly_map, "anomaly_map")
    if img.shape[1:] != amap.shape:
        raise ValueError(f"image (H, W) = {img.shape[1:]} and anomaly_map (H, W) = {amap.shape} differ")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img
    rgb = np.moveaxis(rgb, 0, -1)
    m = _window(amap, map_range)
    weight = (alpha * m)[..., None]
    out = (1.0 - weight) * rgb + weight * _hot(m)
    return np.round(out * 255.0).astype(np.uint8)


def write_map_nifti_2d(map_hw: Any, path: PathLike) -> Path:
    """Write a 2D float map as a single-slice 3D NIfTI that overlays the original 2D image in 3D Slicer.

    Slicer (through ITK) reads a PNG with column index ``i`` along x, row index ``j`` along y, origin 0,
    spacing 1 and identity direction in LPS, which is ``diag(-1, -1, 1)`` in the RAS space of NIfTI. The map
    is therefore stored as ``data`` of shape ``(W, H, 1)`` with ``data[i, j, 0] = map[j, i]`` and the affine
    ``diag(-1, -1, 1, 1)`` (qform and sform code 1). Avoid ``seg``/``label`` in the file name, or Slicer loads
    it as a label map. MONAI 1.6.1's ``SaveImage`` cannot write 2D NIfTI, hence nibabel.

    Args:
        map_hw: the map, ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)``; stored as float32.
        path: destination ``.nii`` or ``.nii.gz`` (written atomically).

    Returns:
        The written path.
    """
    m = _as_hw(map_hw, "map_hw").astype(np.float32)
    data = np.ascontiguousarray(m.T[:, :, None])
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    dest = Path(path)
    with atomic_path(dest) as tmp:
        nib.save(img, tmp)
    return dest


def read_map_nifti_2d(path: PathLike) -> np.ndarray:
    """Read a map written by :func:`write_map_nifti_2d` back as a float32 ``(H, W)`` array.

    Raises:
        DataError: the file is missing, not NIfTI, or not a single slice.
    """
    p = require_file(path)
    if not sniff_format(p).startswith(("nifti1", "nifti2")):
        raise DataError(p, "wrong magic bytes: not a NIfTI file")
    try:
        data = np.asarray(cast(Any, nib.load(p)).dataobj, dtype=np.float32)
    except (EOFError, OSError, ValueError) as e:
        raise DataError(p, f"cannot read the voxel data: {e}") from e
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim != 2:
        raise DataError(p, f"is not a single-slice 2D map (shape {data.shape})")
    return np.ascontiguousarray(data.T)
