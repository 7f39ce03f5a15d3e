"""2D images (``read_image_2d``): damaged files, unsupported modes, NaN pixels, decompression bombs."""

from __future__ import annotations

import struct
import zlib
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from medood.data.image2d import read_image_2d
from tests.reliability.corpus.nifti import write_nifti
from tests.reliability.corpus.registry import bad


def png(path: Path, array: np.ndarray | None = None) -> Path:
    """An RGB PNG (or ``array``'s mode: (H, W, 4) uint8 gives RGBA)."""
    a = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8) if array is None else array
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


image2d = partial(bad, "image2d", read=read_image_2d)


@image2d("truncated_png", "truncated or corrupt PNG")
def _(tmp: Path) -> Path:
    raw = png(tmp / "full.png").read_bytes()
    (tmp / "cut.png").write_bytes(raw[: len(raw) // 2])
    return tmp / "cut.png"


@image2d("corrupt_png_crc", "truncated or corrupt PNG")
def _(tmp: Path) -> Path:
    raw = bytearray(png(tmp / "crc.png").read_bytes())
    raw[60] ^= 0xFF  # inside the IDAT chunk: its CRC no longer matches
    (tmp / "crc.png").write_bytes(bytes(raw))
    return tmp / "crc.png"


@image2d("nifti_named_png", "wrong magic bytes.*NIfTI")
def _(tmp: Path) -> Path:
    return write_nifti(tmp / "x.nii").rename(tmp / "x.png")


@image2d("cmyk_jpeg", "unsupported image mode 'CMYK'")
def _(tmp: Path) -> Path:
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(tmp / "print.jpg")
    return tmp / "print.jpg"


@image2d("multiframe_tiff", "has 3 frames")
def _(tmp: Path) -> Path:
    frames = [Image.new("L", (8, 8), v) for v in (10, 20, 30)]
    frames[0].save(tmp / "stack.tif", save_all=True, append_images=frames[1:])
    return tmp / "stack.tif"


@image2d("nan_float_tiff", "contains 2 NaN")
def _(tmp: Path) -> Path:
    a = np.random.default_rng(0).random((8, 9)).astype(np.float32)
    a[0, :2] = np.nan
    Image.fromarray(a).save(tmp / "float.tif")  # mode F
    return tmp / "float.tif"


@image2d("png_header_claims_1600_megapixels", "6.0 GiB as float32\\), above the memory budget of 4.0 GiB")
def _(tmp: Path) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)  # 40000² grey pixels: 6 GiB as float32
    idat = zlib.compress(b"")
    (tmp / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return tmp / "bomb.png"


@bad("image2d", "above_memory_budget", "above the memory budget", partial(read_image_2d, max_bytes=1000))
def _(tmp: Path) -> Path:
    return png(tmp / "big.png")


@image2d("truncated_jpeg", "truncated or corrupt JPEG")
def _(tmp: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp / "a.jpg")
    raw = (tmp / "a.jpg").read_bytes()
    (tmp / "a.jpg").write_bytes(raw[: len(raw) // 2])
    return tmp / "a.jpg"


@image2d("zero_byte_png", "0-byte")
def _(tmp: Path) -> Path:
    (tmp / "empty.png").write_bytes(b"")
    return tmp / "empty.png"
