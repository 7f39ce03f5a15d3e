"""NIfTI volumes: validated loading into MONAI MetaTensors, and splitting 4D multi-sequence files.

Every failure becomes a :class:`~medood.data.errors.DataError` that names the file and the problem:
missing path, empty folder, 0-byte file, wrong magic bytes (a PNG or random bytes renamed ``.nii.gz``),
truncated or corrupt gzip stream (the whole stream's CRC is verified), header/data size mismatch, NaN/Inf
voxels, constant volumes, a 4D or 2D file where a 3D volume is expected, a volume above the memory budget
(checked from the header, before any voxel is read; :func:`medood.data._files.max_image_bytes`), and a bad
geometry: a zero, negative or non-finite ``pixdim`` (nibabel would silently replace it by 1 or its absolute
value), a singular, sheared or absurd affine (:func:`medood.data.geometry.check_affine`), and an sform /
qform / pixdim disagreement that MONAI would silently resolve by picking one of them.

Constant volumes (all zero, or any single value) are an **error by default**: they carry no image content,
they usually come from a failed export or conversion, and intensity normalisation divides by their zero
standard deviation. Pass ``allow_constant=True`` to load them anyway (a warning is logged), e.g. to let a
detector score them as out-of-distribution.

Arrays are channel-first ``(C, X, Y, Z)`` with the NIfTI affine (RAS) in ``meta["affine"]``, exactly as
``monai.transforms.LoadImage(reader=NibabelReader(), ensure_channel_first=True)`` gives them.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader

from medood.data._files import (
    PathLike,
    check_memory_budget,
    describe_format,
    read_with_monai,
    require_file,
    sniff_format,
)
from medood.data.errors import DataError
from medood.data.geometry import check_affine, describe_spacing
from medood.utils.io import atomic_path

__all__ = ["check_volume", "load_volume", "save_split_4d", "split_4d"]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    return ""


def _check_nifti_bytes(path: Path) -> str:
    """Check the extension and the magic bytes before nibabel sees the file; return the sniffed format."""
    suffix = _nifti_suffix(path)
    if not suffix:
        raise DataError(
            path,
            f"unsupported extension {''.join(path.suffixes) or '(none)'!r}, expected .nii or .nii.gz",
            "read DICOM folders with medood.data.load_dicom_series and PNG/JPG/TIFF with medood.data.read_image_2d",
        )
    kind = sniff_format(path)
    if kind == "gzip-truncated":
        raise DataError(path, "truncated gzip stream: the file ends before the NIfTI header is complete")
    if kind == "gzip-corrupt":
        raise DataError(path, "corrupt gzip stream: not a valid gzip file", "re-download or re-export the file")
    if suffix == ".nii.gz" and kind in ("nifti1", "nifti2"):
        raise DataError(path, "is named .nii.gz but is not gzip-compressed", "rename it to .nii")
    if suffix == ".nii" and kind.endswith(".gz"):
        raise DataError(path, "is gzip-compressed but named .nii", "rename it to .nii.gz")
    if kind not in ("nifti1", "nifti2", "nifti1.gz", "nifti2.gz"):
        looks = "unrecognised content" if kind == "unknown" else f"the content looks like {describe_format(kind)}"
        raise DataError(path, f"wrong magic bytes: not a NIfTI file ({looks})")
    return kind


def _check_raw_pixdim(path: Path, kind: str) -> None:
    """Check the header's voxel spacing as stored, before nibabel replaces 0 by 1 and negatives by their abs."""
    klass = nib.Nifti2Header if kind.startswith("nifti2") else nib.Nifti1Header
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            header = klass.from_fileobj(f, check=False)
    except Exception as e:  # a header that does not even parse: reported by _open_header
        logger.debug("%s: raw header not readable: %s", path, e)
        return
    n = int(min(max(int(header["dim"][0]), 1), 3))
    pixdim = np.asarray(header["pixdim"][1 : n + 1], dtype=np.float64)
    if not np.isfinite(pixdim).all() or (pixdim <= 0).any():
        what = "not finite" if not np.isfinite(pixdim).all() else "zero" if (pixdim == 0).any() else "negative"
        raise DataError(
            path,
            f"has a {what} voxel spacing in its header (pixdim {describe_spacing(pixdim)})",
            "fix the header; nibabel would silently set it to 1 or its absolute value",
        )


def _open_header(path: Path, max_bytes: int | None) -> nib.Nifti1Image | nib.Nifti2Image:
    """Open the file lazily with nibabel; check size, budget and geometry before any voxel is read."""
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises ImageFileError, HeaderDataError, ValueError, OSError ...
        raise DataError(path, f"invalid NIfTI header: {e}") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"is read by nibabel as {type(img).__name__}, not as NIfTI")
    shape = tuple(int(s) for s in img.shape)
    if not shape or min(shape) <= 0:
        raise DataError(path, f"has an empty data shape {shape}: an axis of length 0")
    check_memory_budget(path, shape, max_bytes)
    check_affine(path, img.affine, spatial_dims=min(len(shape), 3))
    if _nifti_suffix(path) == ".nii":
        header = img.header
        nbytes = int(np.prod(shape)) * header.get_data_dtype().itemsize
        offset = int(getattr(img.dataobj, "offset", 0) or header.get_data_offset())
        available = path.stat().st_size - offset
        if available < nbytes:
            raise DataError(
                path,
                f"header/data size mismatch: the header says {_shape_str(shape)} {header.get_data_dtype()} "
                f"({nbytes} bytes from offset {offset}) but the file holds only {max(available, 0)} bytes of data",
                "the file is truncated or the header is wrong",
            )
    return img


def _check_same_affine(path: Path, header_img: nib.Nifti1Image | nib.Nifti2Image, img: MetaTensor) -> None:
    """MONAI replaces an sform (or qform) that disagrees with ``pixdim`` by the other one: refuse that guess."""
    expected = np.asarray(header_img.affine, dtype=np.float64)
    got = np.asarray(img.affine, dtype=np.float64)
    if got.shape == expected.shape and np.allclose(got, expected, rtol=1e-4, atol=1e-3):
        return
    spacing = np.linalg.norm(expected[:3, :3], axis=0)
    pixdim = np.asarray(header_img.header.get_zooms()[:3], dtype=np.float64)
    raise DataError(
        path,
        f"has an inconsistent header: the sform/qform spacing {describe_spacing(spacing)} differs from pixdim "
        f"{describe_spacing(pixdim)} (MONAI would silently use another geometry than nibabel and viewers)",
        "fix the header so sform, qform and pixdim agree",
    )


def _shape_str(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


#: Raw bytes decoded per step by :class:`_StreamingNibabelReader` (the only memory on top of the output).
_CHUNK_BYTES = 1 << 24


class _ShortData(OSError):
    """The voxel data ends before the header's size (a complete gzip stream, or a plain file, that is too short)."""


def _read_exact(f: Any, view: memoryview, done: int, total: int) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise _ShortData(f"Expected {total} bytes, got {done + got} bytes")
        got += n


def stream_voxels(path: Path, img: nib.Nifti1Image | nib.Nifti2Image) -> np.ndarray:
    """Decode the voxels of ``img`` (opened lazily from ``path``) into one C-contiguous float32 array, in chunks.

    The output is allocated once and filled with at most :data:`_CHUNK_BYTES` of raw data at a time (whole
    slices, or rows of one slice), scaled by the header's slope and intercept, so the peak memory is the float32
    volume plus one chunk; nibabel and MONAI would hold the raw bytes, a decompressed copy, the Fortran-order
    array and its C-order float copy. A gzip stream is read to its end, which verifies its CRC and length.
    Up to 4D; the caller reads other files through nibabel.
    """
    proxy: Any = img.dataobj
    dtype = np.dtype(proxy.dtype)
    shape = tuple(int(s) for s in img.shape)
    x, y, z, t = (*shape, 1, 1, 1)[:4]
    out = np.empty(shape, dtype=np.float32)
    dest = out.reshape(x, y, z, t).transpose(3, 2, 1, 0)  # (t, z, y, x): the file's order, a view of ``out``
    slope, inter = float(proxy.slope), float(proxy.inter)
    scaled = (slope, inter) != (1.0, 0.0)
    rows = max(1, _CHUNK_BYTES // (x * dtype.itemsize))
    planes = max(1, rows // y)
    buf = bytearray(min(rows, y * z) * x * dtype.itemsize)
    done = [0]

    def take(f: Any, n_rows: int) -> np.ndarray:
        n = n_rows * x * dtype.itemsize
        _read_exact(f, memoryview(buf)[:n], done[0], out.size * dtype.itemsize)
        done[0] += n
        raw = np.frombuffer(buf, dtype=dtype, count=n_rows * x)
        return raw * slope + inter if scaled else raw

    opener: Any = gzip.open if _nifti_suffix(path) == ".nii.gz" else open
    with opener(path, "rb") as f:
        f.seek(int(proxy.offset))
        for ti in range(t):
            if rows >= y:  # whole slices per chunk
                for z0 in range(0, z, planes):
                    z1 = min(z, z0 + planes)
                    dest[ti, z0:z1] = take(f, (z1 - z0) * y).reshape(z1 - z0, y, x)
                continue
            for zi in range(z):  # a slice larger than a chunk: blocks of rows
                for y0 in range(0, y, rows):
                    y1 = min(y, y0 + rows)
                    dest[ti, zi, y0:y1] = take(f, y1 - y0).reshape(y1 - y0, x)
        if opener is gzip.open:
            while f.read(1 << 22):  # the CRC and length are checked at the end of the stream
                pass
    return out


class _StreamingNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` (same meta data) whose voxels come from :func:`stream_voxels`."""

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        if np.dtype(img.dataobj.dtype).kind not in "biuf" or len(img.shape) > 4:  # RGB, complex, 5D: nibabel
            return np.asarray(img.dataobj, dtype=np.float32)
        return stream_voxels(Path(filename), img)


def _read_data(path: Path, squeeze: bool) -> MetaTensor:
    """Read the voxels through MONAI's ``NibabelReader`` (streamed), turning decoder errors into DataErrors."""
    reader = _StreamingNibabelReader(squeeze_non_spatial_dims=squeeze)
    try:
        return read_with_monai(reader, path)
    except EOFError as e:
        raise DataError(path, "truncated gzip stream: the compressed data ends early", "re-download the file") from e
    except (OSError, zlib.error) as e:
        msg = str(e)
        match = re.search(r"Expected (\d+) bytes, got (\d+) bytes", msg)
        if match:
            raise DataError(
                path,
                f"header/data size mismatch: the header needs {match.group(1)} bytes of voxel data but the file "
                f"holds {match.group(2)}",
                "the file is truncated or the header is wrong",
            ) from e
        if _nifti_suffix(path) == ".nii.gz":
            raise DataError(path, f"corrupt gzip stream ({e})", "re-download or re-export the file") from e
        raise DataError(path, f"cannot read the voxel data: {msg.splitlines()[0] if msg else type(e).__name__}") from e
    except Exception as e:  # ValueError from odd dtypes, ...
        raise DataError(path, f"cannot read the voxel data: {type(e).__name__}: {e}") from e


def check_volume(
    img: torch.Tensor | np.ndarray,
    path: PathLike,
    allow_nonfinite: bool = False,
    allow_constant: bool = False,
) -> None:
    """Check loaded voxels: no NaN/Inf, not constant.

    Args:
        img: the loaded array (any shape).
        path: the file it came from (for the error message).
        allow_nonfinite: accept NaN/Inf voxels (only a warning is logged). Defaults to ``False``.
        allow_constant: accept a constant volume (only a warning is logged). Defaults to ``False``.

    Raises:
        DataError: NaN/Inf voxels (the message gives how many of each), or a constant volume.
    """
    t = torch.as_tensor(img).as_subclass(torch.Tensor)  # MetaTensor ops would copy the meta data and more
    if t.is_floating_point() and t.numel() and not torch.isfinite(t.sum()):  # else every voxel is finite
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        if n_nan or n_inf:
            problem = f"contains {n_nan} NaN and {n_inf} Inf voxels (of {t.numel()})"
            if not allow_nonfinite:
                raise DataError(path, problem, "fix the file or pass allow_nonfinite=True")
            logger.warning("%s: %s", path, problem)
            t = t[torch.isfinite(t)]
    if t.numel() == 0:
        return
    lo, hi = float(t.min()), float(t.max())
    if lo == hi:
        problem = "is all zero" if lo == 0 else f"is constant (every voxel is {lo:g})"
        if not allow_constant:
            raise DataError(path, problem + ": no image content", "pass allow_constant=True to load it anyway")
        logger.warning("%s: %s", path, problem)


def _check_dims(path: Path, channels: int, spatial: tuple[int, ...], expect_3d: bool) -> None:
    """Check the channel count and spatial shape of a channel-first volume (singleton extra dims squeezed)."""
    if not expect_3d:
        if len(spatial) not in (2, 3):
            raise DataError(path, f"has {len(spatial)} spatial dimensions {_shape_str(spatial)}, expected 2 or 3")
        return
    if channels > 1:
        raise DataError(
            path,
            f"is 4D with {channels} volumes of {_shape_str(spatial)}, expected a single 3D volume",
            "split it with medood.data.split_4d(path, channel_names=[...]) or load all volumes as channels with "
            "load_volume(path, expect_3d=False)",
        )
    if len(spatial) in (2, 3) and sum(s > 1 for s in spatial) < 3:
        raise DataError(path, f"is 2D ({_shape_str(spatial)}, a single slice), expected a 3D volume")
    if len(spatial) != 3:
        raise DataError(path, f"has {len(spatial)} spatial dimensions {_shape_str(spatial)}, expected 3")


def load_volume(
    path: PathLike,
    expect_3d: bool = True,
    allow_nonfinite: bool = False,
    allow_constant: bool = False,
    max_bytes: int | None = None,
) -> MetaTensor:
    """Load and validate a NIfTI file (``.nii`` or ``.nii.gz``) as a channel-first MONAI MetaTensor.

    Args:
        path: the NIfTI file.
        expect_3d: require a single 3D volume, i.e. output shape ``(1, X, Y, Z)`` with ``Z > 1``. A 4D file whose
            4th dimension is 1 counts as 3D. With ``False``, 2D images give ``(1, X, Y)`` and 4D files
            ``(N, X, Y, Z)`` (the volumes become channels). Defaults to ``True``.
        allow_nonfinite: accept NaN/Inf voxels with a warning instead of an error. Defaults to ``False``.
        allow_constant: accept a constant (e.g. all-zero) volume with a warning instead of an error.
            Defaults to ``False``.
        max_bytes: memory budget of the decoded float32 volume. Defaults to ``None``
            (``$MEDOOD_MAX_IMAGE_BYTES``, else 4 GiB).

    Returns:
        A float32 MetaTensor ``(C, *spatial)`` whose ``meta`` holds ``affine`` (RAS), ``original_affine``,
        ``spatial_shape`` and ``filename_or_obj``.

    Raises:
        DataError: missing path, folder, 0-byte file, wrong extension or magic bytes, truncated gzip,
            header/data size mismatch, a volume above the memory budget, bad geometry (see the module
            docstring), NaN/Inf voxels, constant volume, or wrong dimensionality.
    """
    p = require_file(path)
    kind = _check_nifti_bytes(p)
    _check_raw_pixdim(p, kind)
    header_img = _open_header(p, max_bytes)
    shape = tuple(int(s) for s in header_img.shape)
    if expect_3d and len(shape) >= 4:  # fail before reading all the voxels
        _check_dims(p, int(np.prod(shape[3:])), shape[:3], expect_3d=True)
    img = _read_data(p, squeeze=True)
    _check_same_affine(p, header_img, img)
    _check_dims(p, int(img.shape[0]), tuple(int(s) for s in img.shape[1:]), expect_3d)
    check_volume(img, p, allow_nonfinite=allow_nonfinite, allow_constant=allow_constant)
    return img


def _names_from_header(path: Path, n: int) -> list[str] | None:
    """Channel names stored in the NIfTI ``intent_name`` or ``descrip`` field, if they list exactly ``n`` names."""
    header: Any = cast(Any, nib.load(path)).header
    for field in ("intent_name", "descrip"):
        try:
            raw = header[field]
        except (KeyError, ValueError):
            continue
        text = bytes(np.asarray(raw).tobytes()).split(b"\x00")[0].decode("latin-1").strip()
        tokens = [t for t in re.split(r"[,;|/\s]+", text) if t]
        if len(tokens) == n and len(set(tokens)) == n:
            return tokens
    return None


def split_4d(path: PathLike, channel_names: Sequence[str] | None = None) -> dict[str, MetaTensor]:
    """Split a 4D multi-sequence NIfTI (e.g. BraTS T1/T1ce/T2/FLAIR in one file) into named 3D volumes.

    Channel names come from ``channel_names`` if given; otherwise from the NIfTI ``intent_name`` or ``descrip``
    field when it lists exactly one name per volume, separated by commas, semicolons, slashes, bars or spaces
    (e.g. ``"T1,T1ce,T2,FLAIR"``); otherwise they are ``ch0, ch1, ...``. A 3D file (or 4D with one volume)
    gives one channel.

    Args:
        path: the NIfTI file.
        channel_names: one name per volume, in file order. Defaults to ``None`` (from the header, else ``ch<i>``).

    Returns:
        ``{name: MetaTensor (1, X, Y, Z)}`` in file order, each with the file's affine.

    Raises:
        DataError: everything :func:`load_volume` rejects, a file that is not 3D/4D, or a wrong number of names.
    """
    p = Path(path)
    vol = load_volume(p, expect_3d=False)
    if vol.ndim != 4 or vol.shape[-1] == 1:
        raise DataError(p, f"cannot be split into 3D volumes: its shape is {_shape_str(vol.shape[1:])}")
    n = int(vol.shape[0])
    if channel_names is not None:
        names = [str(c) for c in channel_names]
        if len(names) != n:
            raise DataError(p, f"has {n} volumes but {len(names)} channel names were given: {names}")
        if len(set(names)) != n:
            raise ValueError(f"channel_names must be unique, got {names}")
    else:
        names = _names_from_header(p, n) or [f"ch{i}" for i in range(n)]
    return {name: cast(MetaTensor, vol[i : i + 1]) for i, name in enumerate(names)}


def save_split_4d(path: PathLike, out_dir: PathLike, channel_names: Sequence[str] | None = None) -> dict[str, Path]:
    """Split a 4D NIfTI with :func:`split_4d` and write one ``<stem>_<name>.nii.gz`` file per volume.

    Args:
        path: the 4D NIfTI file.
        out_dir: output folder (created if needed). Files are written atomically.
        channel_names: as in :func:`split_4d`. Defaults to ``None``.

    Returns:
        ``{name: written path}``.
    """
    p = Path(path)
    stem = re.sub(r"\.nii(\.gz)?$", "", p.name, flags=re.IGNORECASE)
    written: dict[str, Path] = {}
    for name, vol in split_4d(p, channel_names).items():
        dest = Path(out_dir) / f"{stem}_{name}.nii.gz"
        affine = np.asarray(vol.affine, dtype=np.float64)
        out = nib.Nifti1Image(vol[0].numpy().astype(np.float32), affine)
        out.header.set_qform(affine, code=1)
        out.header.set_sform(affine, code=1)
        with atomic_path(dest) as tmp:
            nib.save(out, tmp)
        written[name] = dest
    return written
