"""NIfTI volumes (``load_volume``): bytes, header, geometry, voxels, dimensions, paths and names."""

from __future__ import annotations

import gzip
import io
import os
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np

from medood.data.readers import load_volume
from tests.reliability.corpus.registry import bad

AFFINE = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])


def vol(shape: tuple[int, ...] = (12, 13, 14), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray = AFFINE) -> Path:
    img = nib.Nifti1Image(vol() if data is None else data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def write_raw_nifti(
    path: Path,
    data: np.ndarray | None = None,
    srow: np.ndarray | None = None,
    pixdim: tuple[float, ...] | None = None,
    codes: tuple[int, int] = (1, 1),
) -> Path:
    """A NIfTI written byte by byte from a header set field by field (nibabel refuses to write such geometry)."""
    data = vol() if data is None else data
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=codes[0])
    header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=codes[1])
    if srow is not None:
        header["srow_x"], header["srow_y"], header["srow_z"] = srow[:3]
    if pixdim is not None:
        header["pixdim"][1 : 1 + len(pixdim)] = pixdim
    buf = io.BytesIO()
    header.write_to(buf)
    buf.write(b"\x00" * (int(header["vox_offset"]) - buf.tell()))
    buf.write(np.asarray(data).tobytes(order="F"))
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


nifti = partial(bad, "nifti", read=load_volume)


@nifti("truncated_gzip", "truncated gzip")
def _(tmp: Path) -> Path:
    raw = write_nifti(tmp / "good.nii.gz").read_bytes()
    (tmp / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    return tmp / "cut.nii.gz"


@nifti("corrupt_gzip", "corrupt gzip stream.*CRC")
def _(tmp: Path) -> Path:
    raw = bytearray(write_nifti(tmp / "corrupt.nii.gz", vol((24, 24, 24))).read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(64)  # still decodes, to wrong voxels: only the stream's CRC tells
    (tmp / "corrupt.nii.gz").write_bytes(bytes(raw))
    return tmp / "corrupt.nii.gz"


@nifti("png_renamed", "wrong magic bytes.*PNG")
def _(tmp: Path) -> Path:
    (tmp / "photo.nii.gz").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return tmp / "photo.nii.gz"


@nifti("random_bytes", "wrong magic bytes")
def _(tmp: Path) -> Path:
    (tmp / "noise.nii").write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    return tmp / "noise.nii"


@nifti("header_dims_exceed_data", "size mismatch")
def _(tmp: Path) -> Path:
    raw = write_nifti(tmp / "full.nii").read_bytes()
    (tmp / "short.nii").write_bytes(raw[:-1000])
    return tmp / "short.nii"


@nifti("header_dims_exceed_data_gz", "size mismatch")
def _(tmp: Path) -> Path:
    raw = write_nifti(tmp / "full.nii").read_bytes()
    (tmp / "short.nii.gz").write_bytes(gzip.compress(raw[:-1000]))
    return tmp / "short.nii.gz"


@nifti("nan_voxels", "contains 3 NaN and 0 Inf")
def _(tmp: Path) -> Path:
    data = vol()
    data[0, 0, :3] = np.nan
    return write_nifti(tmp / "nan.nii.gz", data)


@nifti("inf_voxels", "contains 0 NaN and 2 Inf")
def _(tmp: Path) -> Path:
    data = vol()
    data[1, 1, :2] = [np.inf, -np.inf]
    return write_nifti(tmp / "inf.nii.gz", data)


@nifti("all_zero", "all zero")
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "blank.nii.gz", np.zeros((8, 8, 8), np.float32))


@nifti("constant", "constant")
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "flat.nii.gz", np.full((8, 8, 8), 7.0, np.float32))


@nifti("4d_where_3d_expected", "4D with 5 volumes.*split_4d")
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "fmri.nii.gz", vol((10, 10, 10, 5)))


@nifti("2d_where_3d_expected", "2D")
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "slice.nii.gz", vol((16, 16)))


@nifti("single_slice", "single slice")
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "oneslice.nii.gz", vol((16, 16, 1)))


@nifti("zero_length_axis", "axis of length 0")
def _(tmp: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((8, 0, 8))
    header.set_data_dtype(np.float32)
    buf = io.BytesIO()
    header.write_to(buf)
    (tmp / "empty_axis.nii").write_bytes(buf.getvalue() + b"\x00" * 4)
    return tmp / "empty_axis.nii"


@nifti("zero_pixdim", "zero voxel spacing.*pixdim 2 × 0 × 2")
def _(tmp: Path) -> Path:
    return write_raw_nifti(tmp / "zero_pixdim.nii.gz", pixdim=(2.0, 0.0, 2.0), codes=(0, 0))


@nifti("negative_pixdim", "negative voxel spacing")
def _(tmp: Path) -> Path:
    return write_raw_nifti(tmp / "neg_pixdim.nii.gz", pixdim=(2.0, -1.0, 2.0), codes=(1, 0))


@nifti("zero_spacing_in_sform", "zero voxel spacing")
def _(tmp: Path) -> Path:
    return write_raw_nifti(tmp / "flat_sform.nii.gz", srow=np.diag([2.0, 0.0, 2.0, 1.0]), codes=(0, 1))


@nifti("spacing_1e6", "absurd voxel spacing.*1e\\+06")
def _(tmp: Path) -> Path:
    return write_raw_nifti(tmp / "huge_spacing.nii.gz", srow=np.diag([1e6, 2.0, 2.0, 1.0]), codes=(0, 1))


@nifti("singular_affine", "singular affine")
def _(tmp: Path) -> Path:
    return write_raw_nifti(tmp / "singular.nii.gz", srow=np.zeros((4, 4)), codes=(0, 1))


@nifti("parallel_axes", "singular affine.*parallel")
def _(tmp: Path) -> Path:
    srow = np.array([[2.0, 2.0, 0, 0], [0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    return write_raw_nifti(tmp / "parallel.nii.gz", srow=srow, codes=(0, 1))


@nifti("sheared_affine", "non-orthogonal.*53.13")
def _(tmp: Path) -> Path:
    srow = np.diag([2.0, 2.0, 2.0, 1.0])
    srow[0, 1] = 1.5
    return write_raw_nifti(tmp / "sheared.nii.gz", srow=srow, codes=(0, 1))


@nifti("nan_in_affine", "NaN or infinite entries in its affine")
def _(tmp: Path) -> Path:
    return write_raw_nifti(tmp / "nan_affine.nii.gz", srow=np.diag([np.nan, 2.0, 2.0, 1.0]), codes=(0, 1))


@nifti("sform_disagrees_with_pixdim", "inconsistent header.*3 × 3 × 3 mm.*pixdim 2 × 2 × 2")
def _(tmp: Path) -> Path:
    return write_raw_nifti(tmp / "mismatch.nii.gz", srow=np.diag([3.0, 3.0, 3.0, 1.0]), codes=(1, 1))


@bad("nifti", "above_memory_budget", "above the memory budget", partial(load_volume, max_bytes=4096))
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "big.nii.gz", vol((16, 16, 16)))


@nifti("header_claims_238_gib", "4000×4000×4000 voxels.*above the memory budget")
def _(tmp: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.float32)
    buf = io.BytesIO()
    header.write_to(buf)
    (tmp / "bomb.nii.gz").write_bytes(gzip.compress(buf.getvalue() + b"\x00" * 1004))
    return tmp / "bomb.nii.gz"


@nifti("rgb24_voxels", "cannot read the voxel data")
def _(tmp: Path) -> Path:
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = np.arange(8)[:, None, None]
    nib.save(nib.Nifti1Image(rgb, AFFINE), tmp / "rgb.nii.gz")
    return tmp / "rgb.nii.gz"


@nifti("missing_file", "does not exist")
def _(tmp: Path) -> Path:
    return tmp / "nowhere.nii.gz"


@nifti("zero_byte_file", "0-byte")
def _(tmp: Path) -> Path:
    (tmp / "zero.nii.gz").write_bytes(b"")
    return tmp / "zero.nii.gz"


@nifti("empty_folder", "empty folder")
def _(tmp: Path) -> Path:
    (tmp / "scan.nii.gz").mkdir()
    return tmp / "scan.nii.gz"


@nifti("wrong_extension", "unsupported extension '.mha'")
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "scan.nii.gz").rename(tmp / "scan.mha")


@nifti("uncompressed_named_gz", "not gzip-compressed")
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "plain.nii").rename(tmp / "plain.nii.gz")


@nifti("gzip_named_nii", "gzip-compressed but named .nii")
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "packed.nii.gz").rename(tmp / "packed.nii")


@nifti("symlink_loop", "symbolic link loop")
def _(tmp: Path) -> Path:
    os.symlink(tmp / "b.nii.gz", tmp / "a.nii.gz")
    os.symlink(tmp / "a.nii.gz", tmp / "b.nii.gz")
    return tmp / "a.nii.gz"


@nifti("broken_symlink", "broken symbolic link")
def _(tmp: Path) -> Path:
    os.symlink(tmp / "deleted.nii.gz", tmp / "link.nii.gz")
    return tmp / "link.nii.gz"


@nifti("non_utf8_name", "file name is not valid UTF-8")
def _(tmp: Path) -> Path:
    name = os.fsdecode(b"scan_\xe9t\xe9.nii.gz")  # Latin-1 "scan_été"
    return write_nifti(tmp / name)
