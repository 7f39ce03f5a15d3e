"""DICOM series: discovery by SeriesInstanceUID, validation, slice sorting and loading as a RAS MetaTensor.

Headers are scanned with pydicom (pixel data deferred); slices are sorted by their position along the slice
normal (``ImagePositionPatient · (row cosines × column cosines)`` from ``ImageOrientationPatient``), falling back
to ``InstanceNumber`` when a slice has no position. The sorted files are then decoded by SimpleITK's
``ImageSeriesReader`` (GDCM: handles JPEG/JPEG-LS/JPEG 2000/RLE and applies RescaleSlope/Intercept), and its
LPS geometry is converted to a NIfTI-style RAS affine.

Output convention, identical to NIfTI volumes from :func:`medood.data.load_volume`: ``(C, X, Y, Z)`` where X is
the column index, Y the row index and Z the sorted slice index, so ``vol[0, i, j, k]`` is pixel
``(row j, column i)`` of the k-th slice. Gantry-tilted series are not resampled: ITK's orthogonal geometry is
used. Files without the DICOM preamble (``DICM`` at byte 128) are not recognised.

Refused with a :class:`~medood.data.errors.DataError` before any pixel is decoded: files without pixel data, mixed
series, sizes or orientations, duplicate slice positions, a **missing slice** (a gap in the positions more than
10 % wider than the smallest one: ITK would silently spread the slices evenly), a zero or negative ``PixelSpacing``, a
transfer syntax the decoder does not handle (video, HTJ2K, private), and a series above the memory budget
(:func:`medood.data._files.max_image_bytes`). A file whose pixel data cannot be decoded (e.g. truncated) is named.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from pydicom.errors import InvalidDicomError

from medood.data._files import (
    PathLike,
    check_memory_budget,
    describe_format,
    require_dir,
    require_file,
    sniff_format,
    walk_files,
)
from medood.data.errors import DataError
from medood.data.geometry import check_affine

__all__ = ["find_dicom_series", "group_dicom_files", "load_dicom_series", "several_series", "sort_dicom_slices"]

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Transfer syntaxes SimpleITK's GDCM decodes (uncompressed, deflate, RLE, JPEG, JPEG-LS, JPEG 2000).
_DECODABLE = frozenset(
    {
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
        pydicom.uid.ExplicitVRBigEndian,
        pydicom.uid.RLELossless,
        pydicom.uid.JPEGBaseline8Bit,
        pydicom.uid.JPEGExtended12Bit,
        pydicom.uid.JPEGLossless,
        pydicom.uid.JPEGLosslessSV1,
        pydicom.uid.JPEGLSLossless,
        pydicom.uid.JPEGLSNearLossless,
        pydicom.uid.JPEG2000Lossless,
        pydicom.uid.JPEG2000,
    }
)
#: Largest accepted relative excess of a slice gap over the smallest gap before a slice counts as missing.
MAX_GAP_DEVIATION = 0.1


def _read_header(path: Path) -> pydicom.Dataset:
    """Read a DICOM header with the pixel data deferred; raise DataError for a non-DICOM file."""
    try:
        return pydicom.dcmread(path, defer_size="1 KB")
    except InvalidDicomError as e:
        kind = sniff_format(path)
        looks = "unrecognised content" if kind in ("unknown", "empty") else f"it looks like {describe_format(kind)}"
        raise DataError(path, f"is not a DICOM file (no DICM magic bytes; {looks})") from e
    except Exception as e:  # truncated header, bad VR, ...
        raise DataError(path, f"is a corrupt DICOM file: {type(e).__name__}: {e}") from e


def _candidate_files(root: Path) -> list[Path]:
    return [f for f in walk_files(root) if f.name.upper() != "DICOMDIR"]


def group_dicom_files(
    files: Sequence[Path], errors: list[DataError] | None = None
) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Read the headers of the DICOM files among ``files`` and group them by SeriesInstanceUID.

    Files that are not DICOM and DICOM files without a SeriesInstanceUID are skipped (logged at debug level).

    Args:
        files: candidate files.
        errors: where to collect the :class:`DataError` of a corrupt DICOM header; ``None`` raises it.

    Returns:
        ``{SeriesInstanceUID: [(path, header), ...]}`` in file order.
    """
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for f in files:
        if not pydicom.misc.is_dicom(f):
            logger.debug("%s: not DICOM, skipped", f)
            continue
        try:
            ds = _read_header(f)
        except DataError as e:
            if errors is None:
                raise
            errors.append(e)
            continue
        uid = ds.get("SeriesInstanceUID")
        if not uid:
            logger.debug("%s: no SeriesInstanceUID, skipped", f)
            continue
        headers.setdefault(str(uid), []).append((f, ds))
    return headers


def find_dicom_series(folder: PathLike) -> dict[str, list[Path]]:
    """Find every DICOM series under ``folder`` (recursively), grouped by SeriesInstanceUID.

    Files that are not DICOM, hidden files, ``DICOMDIR`` and DICOM files without a SeriesInstanceUID are
    skipped (logged at debug level). The files of each series are sorted along the slice normal. Symbolic links
    are followed, but a folder is never visited twice (a link loop ends the walk).

    Args:
        folder: the folder to scan.

    Returns:
        ``{SeriesInstanceUID: [sorted file paths]}``, the UIDs in sorted order.

    Raises:
        DataError: the folder does not exist, is empty, or holds no DICOM file.
    """
    root = require_dir(folder)
    candidates = _candidate_files(root)
    headers = group_dicom_files(candidates)
    if not headers:
        raise DataError(root, f"contains no DICOM files ({len(candidates)} files checked)")
    return {uid: [f for f, _ in sort_dicom_slices(items, strict=False)] for uid, items in sorted(headers.items())}


def _orientation(ds: pydicom.Dataset) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    return np.asarray([float(v) for v in iop], dtype=np.float64)


def sort_dicom_slices(
    items: Sequence[tuple[Path, pydicom.Dataset]], strict: bool = True
) -> list[tuple[Path, pydicom.Dataset]]:
    """Sort ``(path, header)`` pairs by position along the slice normal, else by InstanceNumber.

    Args:
        items: the slices of one series.
        strict: raise for two slices at the same position. Defaults to ``True``.

    Returns:
        The pairs, sorted from the lowest to the highest position along the normal
        ``row cosines × column cosines`` (the DICOM "slice direction").

    Raises:
        DataError: two slices lie at the same position (a multi-echo or dynamic series, which must be split), or
            a gap is wider than the others (a missing slice).
    """
    items = list(items)
    if len(items) < 2:
        return items
    iop = _orientation(items[0][1])
    positions = [it[1].get("ImagePositionPatient") for it in items]
    if iop is None or any(p is None or len(p) != 3 for p in positions):
        logger.warning(
            "%s: slices without ImagePositionPatient/ImageOrientationPatient, sorted by InstanceNumber",
            items[0][0].parent,
        )
        return sorted(items, key=lambda it: (int(it[1].get("InstanceNumber", 0) or 0), str(it[0])))
    normal = np.cross(iop[:3], iop[3:])
    dist = np.asarray([float(np.dot([float(v) for v in p], normal)) for p in positions])  # type: ignore[union-attr]
    order = np.argsort(dist, kind="stable")
    gaps = np.diff(dist[order])
    if strict and gaps.size and np.min(gaps) < 1e-4:
        k = int(np.argmin(gaps))
        raise DataError(
            items[order[k + 1]][0],
            f"lies at the same slice position as {items[order[k]][0]} ({dist[order[k]]:.3f} mm along the normal)",
            "the series mixes echoes, time points or acquisitions; split it first",
        )
    if strict and gaps.size > 1:
        _check_gaps(items, order, gaps)
    return [items[i] for i in order]


def _check_gaps(items: Sequence[tuple[Path, pydicom.Dataset]], order: np.ndarray, gaps: np.ndarray) -> None:
    """Refuse a gap much wider than the series' smallest one (a missing slice); warn on a slightly uneven spacing."""
    nominal = float(np.min(gaps))
    k = int(np.argmax(gaps))
    if gaps[k] > (1.0 + MAX_GAP_DEVIATION) * nominal:
        raise DataError(
            items[order[k + 1]][0],
            f"is {gaps[k]:.3f} mm from the previous slice {items[order[k]][0].name}, {gaps[k] / nominal:.2f} times "
            f"the series' smallest slice spacing of {nominal:.3f} mm (a missing slice, or variable spacing)",
            "add the missing file, or resample the series with a tool that reads every slice position",
        )
    if gaps[k] > 1.01 * nominal:
        logger.warning("%s: non-uniform slice spacing (%.3f–%.3f mm)", items[0][0].parent, nominal, gaps[k])


def _select_series(root: Path, series_uid: str | None) -> list[Path]:
    series = find_dicom_series(root)
    if series_uid is not None:
        if series_uid not in series:
            raise DataError(root, f"has no series {series_uid!r}; available: {sorted(series)}")
        return series[series_uid]
    if len(series) > 1:
        raise several_series(root, {uid: len(files) for uid, files in series.items()})
    return next(iter(series.values()))


def several_series(folder: Path, counts: dict[str, int]) -> DataError:
    """The refusal of a folder holding more than one series (``{SeriesInstanceUID: number of files}``)."""
    listing = "; ".join(f"{uid} ({n} files)" for uid, n in sorted(counts.items()))
    return DataError(folder, f"holds {len(counts)} DICOM series: {listing}", "pass series_uid=... or one series' files")


def _check_decodable(f: Path, ds: pydicom.Dataset) -> None:
    """Pixel data present, a transfer syntax GDCM decodes, a positive pixel spacing."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f, "has no pixel data", "it is not an image (report, presentation state, ...)")
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None and ts not in _DECODABLE:
        name = pydicom.uid.UID(str(ts)).name
        raise DataError(
            f,
            f"has an unsupported transfer syntax {name} ({ts})"
            if name != str(ts)
            else f"has an unknown transfer syntax {ts}",
            "convert it to an uncompressed or JPEG / JPEG 2000 syntax, e.g. with dcmconv or gdcmconv",
        )
    spacing = ds.get("PixelSpacing")
    if spacing is not None and (len(spacing) != 2 or any(not float(v) > 0 for v in spacing)):
        raise DataError(f, f"has an invalid PixelSpacing {[float(v) for v in spacing]} (must be two positive numbers)")


def _validate_series(files: Sequence[Path], max_bytes: int | None = None) -> list[tuple[Path, pydicom.Dataset]]:
    """Read every header; check DICOM-ness, pixel data, one series, one image size and one orientation."""
    items = [(f, _read_header(f)) for f in files]
    first_path, first = items[0]
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items)
    rows, cols = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    check_memory_budget(first_path, (int(first.get("SamplesPerPixel", 1) or 1), cols, rows, frames), max_bytes)
    for f, ds in items:
        _check_decodable(f, ds)
        if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
            raise DataError(f, f"belongs to series {ds.get('SeriesInstanceUID')}, not {first.get('SeriesInstanceUID')}")
        size, first_size = (ds.get("Rows"), ds.get("Columns")), (first.get("Rows"), first.get("Columns"))
        if size != first_size:
            raise DataError(
                f,
                f"mixed image sizes in one series: {size[0]}×{size[1]} here but {first_size[0]}×{first_size[1]} "
                f"in {first_path.name}",
            )
        iop, iop0 = _orientation(ds), _orientation(first)
        if iop is not None and iop0 is not None and not np.allclose(iop, iop0, atol=1e-3):
            raise DataError(f, f"has a different ImageOrientationPatient than {first_path.name} (mixed orientations)")
    return sort_dicom_slices(items)


def _single_slice_lps(ds: pydicom.Dataset) -> np.ndarray:
    """LPS affine of one 2D slice from its header (ITK returns such files as 2D images without the z axis)."""
    iop = _orientation(ds)
    row, col = (iop[:3], iop[3:]) if iop is not None else (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    spacing = [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])]
    thickness = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]
    lps[:3, 1] = col * spacing[0]
    lps[:3, 2] = np.cross(row, col) * thickness
    lps[:3, 3] = [float(v) for v in ds.get("ImagePositionPatient", [0.0, 0.0, 0.0])]
    return lps


def _to_metatensor(img: sitk.Image, first: pydicom.Dataset, source: Path, n_files: int) -> MetaTensor:
    arr = sitk.GetArrayViewFromImage(img)  # no copy: (z, y, x) or (y, x), + a component axis if multi-component
    if img.GetNumberOfComponentsPerPixel() == 1:
        arr = arr[..., None]
    if img.GetDimension() == 2:
        arr = arr[None]
        lps = _single_slice_lps(first)
    else:
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3) @ np.diag(img.GetSpacing())
        lps[:3, 3] = img.GetOrigin()
    view: np.ndarray = np.moveaxis(arr, -1, 0).transpose(0, 3, 2, 1)  # (C, x, y, z)
    chw: np.ndarray = np.empty(view.shape, dtype=np.float32)  # one float copy, filled straight from ITK's buffer
    chw[...] = view
    affine = torch.as_tensor(_LPS_TO_RAS @ lps, dtype=torch.float64)
    meta = {
        "affine": affine,
        "original_affine": affine.clone(),
        "spatial_shape": np.asarray(chw.shape[1:]),
        "space": "RAS",
        "original_channel_dim": "no_channel" if chw.shape[0] == 1 else -1,
        "filename_or_obj": os.fspath(source),
        "SeriesInstanceUID": str(first.get("SeriesInstanceUID", "")),
        "Modality": str(first.get("Modality", "")),
        "SeriesDescription": str(first.get("SeriesDescription", "")),
        "num_files": n_files,
    }
    return MetaTensor(torch.from_numpy(chw), meta=meta)


def _itk_message(e: Exception) -> str:
    return str(e).strip().splitlines()[-1]


def _read_pixels(files: list[str], first: pydicom.Dataset) -> sitk.Image:
    """Decode with SimpleITK: one file (possibly multi-frame) with ImageFileReader, several with ImageSeriesReader."""
    if len(files) == 1:
        if int(first.get("NumberOfFrames", 1) or 1) > 1:
            logger.warning("%s: multi-frame DICOM; per-frame geometry is not read, check the affine", files[0])
        return sitk.ReadImage(files[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError:
        for f in files:  # name the file at fault (e.g. a truncated one), not only the series
            try:
                sitk.ReadImage(f)
            except RuntimeError as e:
                raise DataError(f, f"truncated or corrupt: cannot decode its pixel data ({_itk_message(e)})") from e
        raise
    if img.GetDimension() != 3:
        raise DataError(files[0], f"a series of multi-frame files gives a {img.GetDimension()}D image; load one file")
    return img


def load_dicom_series(
    source: PathLike | Sequence[PathLike], series_uid: str | None = None, max_bytes: int | None = None
) -> MetaTensor:
    """Load one DICOM series as a float32 ``(C, X, Y, Z)`` MetaTensor with a RAS affine.

    Args:
        source: a folder (scanned recursively; it must hold exactly one series unless ``series_uid`` is given),
            one file, or a list of files of one series (in any order).
        series_uid: the SeriesInstanceUID to load from a folder holding several. Defaults to ``None``.
        max_bytes: memory budget of the decoded float32 volume. Defaults to ``None``
            (``$MEDOOD_MAX_IMAGE_BYTES``, else 4 GiB).

    Returns:
        The volume, slices sorted along the normal, ``meta["affine"]`` in RAS (NIfTI convention), plus
        ``SeriesInstanceUID``, ``Modality``, ``SeriesDescription`` and ``num_files`` in ``meta``.

    Raises:
        DataError: no DICOM in the folder, a non-DICOM file, a file without pixel data, mixed image sizes or
            orientations, duplicate slice positions, a missing slice, a bad pixel spacing or geometry, an
            unsupported transfer syntax, a series above the memory budget, several series without
            ``series_uid``, or a decoding error.
    """
    if isinstance(source, (str, os.PathLike)):
        src = Path(source)
        if src.is_dir():
            files = _select_series(src, series_uid)
        else:
            files = [require_file(src)]
    else:
        files = [require_file(f) for f in source]
        if not files:
            raise ValueError("load_dicom_series got an empty list of files")
        src = files[0].parent
    items = _validate_series(files, max_bytes)
    sorted_files = [os.fspath(f) for f, _ in items]
    try:
        img = _read_pixels(sorted_files, items[0][1])
    except RuntimeError as e:
        raise DataError(src, f"cannot decode the DICOM pixel data: {_itk_message(e)}") from e
    vol = _to_metatensor(img, items[0][1], src, len(sorted_files))
    check_affine(src, vol.affine.numpy(), spatial_dims=3)
    return vol
