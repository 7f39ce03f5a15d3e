"""DICOM series: grouping, sorting along the slice normal, RAS affine, and the rejected inputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medood.data import DataError
from medood.data.dicom import find_dicom_series, load_dicom_series

ROW = np.array([1.0, 0.0, 0.0])
TILT = np.deg2rad(20)
COL = np.array([0.0, np.cos(TILT), np.sin(TILT)])
NORMAL = np.cross(ROW, COL)
ORIGIN = np.array([-10.0, 20.0, 30.0])
GAP = 2.5


def _write_series(
    folder: Path,
    n: int = 6,
    order: list[int] | None = None,
    uid: str | None = None,
    source: str = "MR_small.dcm",
    instance_numbers: list[int] | None = None,
) -> str:
    """Write slice k (value 10 k, marker 999 at row 0, column 5) at ORIGIN + k GAP NORMAL, files in ``order``."""
    folder.mkdir(parents=True, exist_ok=True)
    src = pydicom.dcmread(get_testdata_file(source))
    uid = uid or generate_uid()
    order = order if order is not None else list(range(n))
    for file_no, k in enumerate(order):
        ds = src.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient = [float(v) for v in np.r_[ROW, COL]]
        ds.ImagePositionPatient = [float(v) for v in ORIGIN + k * GAP * NORMAL]
        ds.InstanceNumber = instance_numbers[file_no] if instance_numbers else file_no + 1
        arr = np.full_like(ds.pixel_array, 10 * k)
        arr[0, 5] = 999
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"img{file_no:03d}.dcm")
    return uid


def _expected_affine(spacing: float) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, 0] = ROW * spacing
    lps[:3, 1] = COL * spacing
    lps[:3, 2] = NORMAL * GAP
    lps[:3, 3] = ORIGIN
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_shuffled_series_is_sorted_along_the_normal(tmp_path: Path) -> None:
    order = [3, 0, 5, 1, 4, 2]  # file i holds slice order[i]; InstanceNumber follows the file order, not position
    _write_series(tmp_path / "s", order=order)
    vol = load_dicom_series(tmp_path / "s")
    assert tuple(vol.shape) == (1, 64, 64, 6)
    assert vol[0, 0, 1, :].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert float(vol[0, 5, 0, 0]) == 999.0, "column index must be the first spatial axis"
    assert float(vol[0, 0, 5, 0]) == 0.0
    np.testing.assert_allclose(vol.affine.numpy(), _expected_affine(0.3125), atol=1e-4)
    assert vol.meta["Modality"] == "MR"
    assert vol.meta["num_files"] == 6


def test_explicit_file_list_in_any_order(tmp_path: Path) -> None:
    _write_series(tmp_path / "s", n=4, order=[2, 3, 0, 1])
    files = sorted((tmp_path / "s").glob("*.dcm"), reverse=True)
    vol = load_dicom_series(files)
    assert vol[0, 0, 1, :].tolist() == [0.0, 10.0, 20.0, 30.0]


def test_ct_rescale_is_applied(tmp_path: Path) -> None:
    _write_series(tmp_path / "ct", n=3, source="CT_small.dcm")
    vol = load_dicom_series(tmp_path / "ct")
    ref = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    intercept = float(ref.RescaleIntercept)
    assert tuple(vol.shape) == (1, 128, 128, 3)
    assert vol[0, 0, 1, :].tolist() == [intercept, 10 + intercept, 20 + intercept]


def test_find_groups_by_series_uid(tmp_path: Path) -> None:
    uid_a = _write_series(tmp_path / "study" / "a", n=3, order=[2, 0, 1])
    uid_b = _write_series(tmp_path / "study" / "b", n=2)
    (tmp_path / "study" / "notes.txt").write_text("not dicom")
    series = find_dicom_series(tmp_path / "study")
    assert sorted(series) == sorted([uid_a, uid_b])
    positions = [float(np.dot(pydicom.dcmread(f).ImagePositionPatient, NORMAL)) for f in series[uid_a]]
    assert positions == sorted(positions)
    with pytest.raises(DataError, match=r"study: holds 2 DICOM series"):
        load_dicom_series(tmp_path / "study")
    assert tuple(load_dicom_series(tmp_path / "study", series_uid=uid_b).shape) == (1, 64, 64, 2)


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match=r"docs: contains no DICOM files"):
        load_dicom_series(tmp_path / "docs")


def test_file_without_pixel_data(tmp_path: Path) -> None:
    _write_series(tmp_path / "s", n=3)
    victim = tmp_path / "s" / "img001.dcm"
    ds = pydicom.dcmread(victim)
    del ds.PixelData
    ds.save_as(victim)
    with pytest.raises(DataError, match=r"img001\.dcm: has no pixel data"):
        load_dicom_series(tmp_path / "s")


def test_mixed_sizes(tmp_path: Path) -> None:
    uid = _write_series(tmp_path / "s", n=3)
    _write_series(tmp_path / "s" / "big", order=[7], uid=uid, source="CT_small.dcm")
    with pytest.raises(DataError, match=r"img000\.dcm: mixed image sizes"):
        load_dicom_series(tmp_path / "s")


def test_non_dicom_file_in_list(tmp_path: Path) -> None:
    _write_series(tmp_path / "s", n=2)
    bogus = tmp_path / "s" / "fake.dcm"
    bogus.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 300)
    with pytest.raises(DataError, match=r"fake\.dcm: is not a DICOM file.*PNG"):
        load_dicom_series([*sorted((tmp_path / "s").glob("img*.dcm")), bogus])


def test_duplicate_positions(tmp_path: Path) -> None:
    _write_series(tmp_path / "s", n=3, order=[0, 1, 1])
    with pytest.raises(DataError, match=re.escape("img002.dcm") + r".*same slice position"):
        load_dicom_series(tmp_path / "s")


def test_missing_positions_fall_back_to_instance_number(tmp_path: Path) -> None:
    _write_series(tmp_path / "s", n=3, order=[1, 2, 0], instance_numbers=[2, 3, 1])
    for f in (tmp_path / "s").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f)
    vol = load_dicom_series(tmp_path / "s")
    assert vol[0, 0, 1, :].tolist() == [0.0, 10.0, 20.0]


def test_single_file_and_multiframe_real_files() -> None:
    ct_path = get_testdata_file("CT_small.dcm")
    ct = load_dicom_series(ct_path)
    ref = pydicom.dcmread(ct_path)
    assert tuple(ct.shape) == (1, 128, 128, 1)
    np.testing.assert_array_equal(ct[0, :, :, 0].numpy().T, ref.pixel_array + float(ref.RescaleIntercept))
    lps_origin = np.array([float(v) for v in ref.ImagePositionPatient])
    np.testing.assert_allclose(ct.affine.numpy()[:3, 3], lps_origin * [-1, -1, 1], atol=1e-4)
    np.testing.assert_allclose(np.diag(ct.affine.numpy())[:2], [-0.661468, -0.661468], atol=1e-5)
    multi = load_dicom_series(get_testdata_file("emri_small.dcm"))  # enhanced MR, 10 frames in one file
    assert tuple(multi.shape) == (1, 64, 64, 10)


def test_real_non_image_dicom_has_no_pixel_data() -> None:
    with pytest.raises(DataError, match=r"rtplan\.dcm: has no pixel data"):
        load_dicom_series(get_testdata_file("rtplan.dcm"))
