"""The four broken inputs every bundle must skip in a mixed batch, for any image format a bundle reads.

:func:`write_broken` writes, beside the good inputs, a truncated copy of a good file, a 0-byte file, a text file with
the image extension and a header-only "bomb" (a valid header declaring an image far above the memory budget, with
no pixel data), named ``broken_<kind><suffix>``.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["BROKEN", "nifti_bomb", "png_bomb", "write_broken"]

BROKEN = ("truncated", "empty", "text", "bomb")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, side: int = 60000) -> Path:
    """A PNG whose header declares ``side`` x ``side`` RGB pixels (43 GB as float32) and that holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b""))
    return path


def nifti_bomb(path: Path, side: int = 2000) -> Path:
    """A gzip NIfTI header declaring ``side``³ float32 voxels (32 GB) followed by no voxel data."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.float32)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    raw = header.binaryblock + b"\x00" * 4  # the 4-byte extension flag; the voxels would start at byte 352
    with gzip.open(path, "wb") as f:
        f.write(raw)
    return path


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def write_broken(folder: Path, good: Path) -> dict[str, Path]:
    """The four broken inputs of ``good``'s format in ``folder``: ``{kind: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(good)
    out = {kind: folder / f"broken_{kind}{suffix}" for kind in BROKEN}
    raw = good.read_bytes()
    out["truncated"].write_bytes(raw[: max(len(raw) // 2, 1)])
    out["empty"].write_bytes(b"")
    out["text"].write_text("this is a text file, not an image\n")
    if suffix in (".nii", ".nii.gz"):
        nifti_bomb(out["bomb"])
        if suffix == ".nii":
            out["bomb"].write_bytes(gzip.decompress(out["bomb"].read_bytes()))
    elif suffix == ".png":
        png_bomb(out["bomb"])
    else:
        raise ValueError(f"no header-only bomb for {suffix} files")
    return out
