"""NIfTI loading: good files, every rejected kind of bad file, and 4D multi-sequence splitting."""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import MetaTensor

from medood.data import DataError
from medood.data.readers import load_volume, save_split_4d, split_4d

AFFINE = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, descrip: str | None = None) -> Path:
    img = nib.Nifti1Image(data, affine)
    if descrip is not None:
        img.header["descrip"] = descrip.encode()
    nib.save(img, path)
    return path


def _vol(shape: tuple[int, ...] = (16, 17, 18), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii"])
def test_good_volume_loads_channel_first_with_affine(tmp_path: Path, name: str) -> None:
    data = _vol()
    path = _write(tmp_path / name, data)
    img = load_volume(path)
    assert isinstance(img, MetaTensor)
    assert tuple(img.shape) == (1, 16, 17, 18)
    assert img.dtype.is_floating_point
    np.testing.assert_allclose(img[0].numpy(), data)
    np.testing.assert_allclose(img.affine.numpy(), AFFINE)
    assert img.meta["filename_or_obj"] == str(path)


def test_4d_with_one_volume_is_3d(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.nii.gz", _vol((16, 16, 16, 1)))
    assert tuple(load_volume(path).shape) == (1, 16, 16, 16)


def test_4d_without_expect_3d_gives_channels(tmp_path: Path) -> None:
    data = _vol((16, 16, 16, 3))
    img = load_volume(_write(tmp_path / "multi.nii.gz", data), expect_3d=False)
    assert tuple(img.shape) == (3, 16, 16, 16)
    np.testing.assert_allclose(img[2].numpy(), data[..., 2])


def _truncated_gz(tmp: Path) -> Path:
    good = _write(tmp / "good.nii.gz", _vol())
    raw = good.read_bytes()
    (tmp / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    return tmp / "cut.nii.gz"


def _png_renamed(tmp: Path) -> Path:
    p = tmp / "photo.nii.gz"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return p


def _random_bytes(tmp: Path) -> Path:
    p = tmp / "noise.nii.gz"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    return p


def _short_nii(tmp: Path) -> Path:
    raw = _write(tmp / "full.nii", _vol()).read_bytes()
    (tmp / "short.nii").write_bytes(raw[:-1000])
    return tmp / "short.nii"


def _short_nii_gz(tmp: Path) -> Path:
    raw = _write(tmp / "full.nii", _vol()).read_bytes()
    (tmp / "short.nii.gz").write_bytes(gzip.compress(raw[:-1000]))
    return tmp / "short.nii.gz"


def _nan(tmp: Path) -> Path:
    data = _vol()
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    return _write(tmp / "nan.nii.gz", data)


def _zeros(tmp: Path) -> Path:
    return _write(tmp / "blank.nii.gz", np.zeros((8, 8, 8), np.float32))


def _constant(tmp: Path) -> Path:
    return _write(tmp / "flat.nii.gz", np.full((8, 8, 8), 7.0, np.float32))


def _four_d(tmp: Path) -> Path:
    return _write(tmp / "brats.nii.gz", _vol((16, 16, 16, 4)))


def _two_d(tmp: Path) -> Path:
    return _write(tmp / "slice2d.nii.gz", _vol((16, 16)))


def _single_slice(tmp: Path) -> Path:
    return _write(tmp / "oneslice.nii.gz", _vol((16, 16, 1)))


def _missing(tmp: Path) -> Path:
    return tmp / "nowhere.nii.gz"


def _empty_folder(tmp: Path) -> Path:
    (tmp / "emptydir").mkdir()
    return tmp / "emptydir"


def _zero_bytes(tmp: Path) -> Path:
    (tmp / "zero.nii.gz").write_bytes(b"")
    return tmp / "zero.nii.gz"


def _wrong_extension(tmp: Path) -> Path:
    return _write(tmp / "scan.mha.nii.gz", _vol()).rename(tmp / "scan.mha")


def _uncompressed_named_gz(tmp: Path) -> Path:
    return _write(tmp / "plain.nii", _vol()).rename(tmp / "plain.nii.gz")


BAD_CASES = [
    (_truncated_gz, "truncated gzip"),
    (_png_renamed, "wrong magic bytes.*PNG"),
    (_random_bytes, "wrong magic bytes"),
    (_short_nii, "size mismatch"),
    (_short_nii_gz, "size mismatch"),
    (_nan, "3 NaN and 1 Inf"),
    (_zeros, "all zero"),
    (_constant, "constant"),
    (_four_d, "4D with 4 volumes.*split_4d"),
    (_two_d, "2D"),
    (_single_slice, "2D.*single slice"),
    (_missing, "does not exist"),
    (_empty_folder, "empty folder"),
    (_zero_bytes, "0-byte"),
    (_wrong_extension, "unsupported extension"),
    (_uncompressed_named_gz, "not gzip-compressed"),
]


@pytest.mark.parametrize(("make", "problem"), BAD_CASES, ids=[m.__name__.strip("_") for m, _ in BAD_CASES])
def test_bad_file_raises_data_error_naming_file_and_problem(tmp_path: Path, make, problem: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError, match=rf"{re.escape(path.name)}.*{problem}") as info:
        load_volume(path)
    assert info.value.path == str(path)


def test_allow_constant_and_nonfinite_only_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medood.data.readers"):
        blank = load_volume(_zeros(tmp_path), allow_constant=True)
        nan = load_volume(_nan(tmp_path), allow_nonfinite=True)
    assert float(blank.abs().max()) == 0.0
    assert int(nan.isnan().sum()) == 3
    assert "all zero" in caplog.text
    assert "3 NaN" in caplog.text


def test_split_4d_with_given_names(tmp_path: Path) -> None:
    data = _vol((16, 16, 16, 4))
    path = _write(tmp_path / "case.nii.gz", data)
    parts = split_4d(path, channel_names=["t1", "t1ce", "t2", "flair"])
    assert list(parts) == ["t1", "t1ce", "t2", "flair"]
    for i, vol in enumerate(parts.values()):
        assert tuple(vol.shape) == (1, 16, 16, 16)
        np.testing.assert_allclose(vol[0].numpy(), data[..., i])
        np.testing.assert_allclose(vol.affine.numpy(), AFFINE)


def test_split_4d_names_from_header_or_default(tmp_path: Path) -> None:
    named = _write(tmp_path / "named.nii.gz", _vol((16, 16, 16, 4)), descrip="T1, T1ce, T2, FLAIR")
    assert list(split_4d(named)) == ["T1", "T1ce", "T2", "FLAIR"]
    unnamed = _write(tmp_path / "plain.nii.gz", _vol((16, 16, 16, 3)), descrip="acquired 2020")
    assert list(split_4d(unnamed)) == ["ch0", "ch1", "ch2"]


def test_split_4d_rejects_wrong_number_of_names(tmp_path: Path) -> None:
    path = _four_d(tmp_path)
    with pytest.raises(DataError, match=r"brats\.nii\.gz: has 4 volumes but 2 channel names"):
        split_4d(path, channel_names=["a", "b"])


def test_save_split_4d_writes_loadable_3d_files(tmp_path: Path) -> None:
    data = _vol((16, 16, 16, 2))
    written = save_split_4d(_write(tmp_path / "sub-1.nii.gz", data), tmp_path / "out", ["T1", "FLAIR"])
    assert sorted(p.name for p in written.values()) == ["sub-1_FLAIR.nii.gz", "sub-1_T1.nii.gz"]
    flair = load_volume(written["FLAIR"])
    np.testing.assert_allclose(flair[0].numpy(), data[..., 1])
    np.testing.assert_allclose(flair.affine.numpy(), AFFINE)
