"""DICOM series (``load_dicom_series``): series mix-ups, missing data and slices, encodings, geometry."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from medood.data.dicom import load_dicom_series
from tests.reliability.corpus.registry import Built, bad

ROW, COL = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])


def write_series(folder: Path, n: int = 4, positions: list[float] | None = None, uid: str | None = None) -> list[Path]:
    """``n`` slices of pydicom's MR_small at ``positions`` (mm along z; default 0, 2.5, 5, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    uid = uid or generate_uid()
    positions = positions if positions is not None else [2.5 * k for k in range(n)]
    files = []
    for k, z in enumerate(positions):
        ds = src.copy()
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), k + 1
        ds.ImageOrientationPatient = [*ROW, *COL]
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.PixelData = (np.full_like(ds.pixel_array, 10 * (k + 1))).tobytes()
        ds.save_as(folder / f"img{k:03d}.dcm")
        files.append(folder / f"img{k:03d}.dcm")
    return files


def edit(path: Path, change: Callable[[pydicom.Dataset], None], **save: Any) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, **save)
    return path


def _set_syntax(uid: str) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    return change


dicom = partial(bad, "dicom", read=load_dicom_series)


@dicom("mixed_series_in_folder", "holds 2 DICOM series")
def _(tmp: Path) -> Path:
    write_series(tmp / "study" / "t1", 3)
    write_series(tmp / "study" / "t2", 3)
    return tmp / "study"


@dicom("no_pixel_data", "has no pixel data")
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", 3)
    edit(files[1], lambda ds: ds.__delattr__("PixelData"))
    return tmp / "s", files[1]


@dicom("unsupported_transfer_syntax", "unsupported transfer syntax MPEG2")
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", 3)
    edit(files[0], _set_syntax("1.2.840.10008.1.2.4.100"), enforce_file_format=False)
    return tmp / "s", files[0]


@dicom("unknown_transfer_syntax", "unknown transfer syntax 1.2.3.4.5")
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", 3)
    edit(files[2], _set_syntax("1.2.3.4.5"), enforce_file_format=False)
    return tmp / "s", files[2]


@dicom("missing_slice", "5.000 mm from the previous slice img002.dcm, 2.00 times.*2.500 mm.*missing slice")
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", positions=[0.0, 2.5, 5.0, 10.0, 12.5])
    return tmp / "s", files[3]


@dicom("duplicate_slice_position", "same slice position")
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", positions=[0.0, 2.5, 2.5])
    return tmp / "s", files[2]


@dicom("mixed_image_sizes", "mixed image sizes")
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", 3)
    edit(files[1], lambda ds: setattr(ds, "Columns", 32))
    return tmp / "s", files[1]


@dicom("mixed_orientations", "different ImageOrientationPatient")
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", 3)
    edit(files[2], lambda ds: setattr(ds, "ImageOrientationPatient", [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]))
    return tmp / "s", files[2]


@dicom("zero_pixel_spacing", "invalid PixelSpacing \\[0.0, 0.0\\]")
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", 3)
    edit(files[0], lambda ds: setattr(ds, "PixelSpacing", [0, 0]))
    return tmp / "s", files[0]


@dicom("truncated_file", "truncated or corrupt")
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", 3)
    raw = files[1].read_bytes()
    files[1].write_bytes(raw[: len(raw) - 3000])
    return tmp / "s", files[1]


@dicom("folder_without_dicom", "contains no DICOM files")
def _(tmp: Path) -> Path:
    (tmp / "docs").mkdir()
    (tmp / "docs" / "report.txt").write_text("not an image")
    return tmp / "docs"


@bad("dicom", "png_in_file_list", "not a DICOM file.*PNG", lambda files: load_dicom_series(files))
def _(tmp: Path) -> Any:
    files = write_series(tmp / "s", 2)
    fake = tmp / "s" / "fake.dcm"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 300)
    return [*files, fake], fake


@bad("dicom", "above_memory_budget", "above the memory budget", partial(load_dicom_series, max_bytes=10_000))
def _(tmp: Path) -> Built:
    files = write_series(tmp / "s", 3)
    return tmp / "s", files[0]
