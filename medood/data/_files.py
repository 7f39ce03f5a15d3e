"""Shared helpers for the readers: path checks, format sniffing from magic bytes, MONAI reader → MetaTensor.

These are internal; the public readers live in :mod:`medood.data.readers`, :mod:`medood.data.dicom`,
:mod:`medood.data.image2d`, :mod:`medood.data.medmnist`, :mod:`medood.data.folders` and
:mod:`medood.data.datalist`.
"""

from __future__ import annotations

import errno
import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor
from monai.transforms import EnsureChannelFirst
from monai.transforms.io.array import switch_endianness

from medood.data.errors import DataError

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "check_memory_budget",
    "check_name",
    "describe_format",
    "max_image_bytes",
    "parse_bytes",
    "read_with_monai",
    "require_dir",
    "require_file",
    "set_max_image_bytes",
    "sniff_format",
    "walk_files",
]

PathLike = str | os.PathLike[str]

#: Largest decoded image (float32 voxels) a reader accepts unless told otherwise: 4 GiB, i.e. about 1024³ voxels.
DEFAULT_MAX_IMAGE_BYTES = 4 * 2**30
#: Environment variable overriding :data:`DEFAULT_MAX_IMAGE_BYTES` (bytes; suffixes K, M, G allowed).
MAX_IMAGE_BYTES_ENV = "MEDOOD_MAX_IMAGE_BYTES"

# (signature, offset, format name); checked in order.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
    (b"GIF8", 0, "gif"),
    (b"\x1f\x8b", 0, "gzip"),
    (b"PK\x03\x04", 0, "zip"),
    (b"\x93NUMPY", 0, "npy"),
    (b"DICM", 128, "dicom"),
    (b"n+1\x00", 344, "nifti1"),
    (b"ni1\x00", 344, "analyze-pair"),
    (b"n+2\x00\r\n\x1a\n", 4, "nifti2"),
    (b"BM", 0, "bmp"),
)

_DESCRIPTIONS = {
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "tiff": "a TIFF image",
    "gif": "a GIF image",
    "bmp": "a BMP image",
    "gzip": "a gzip-compressed file",
    "zip": "a ZIP archive (e.g. a .npz file)",
    "npy": "a NumPy .npy array",
    "dicom": "a DICOM file",
    "nifti1": "a NIfTI-1 file",
    "nifti2": "a NIfTI-2 file",
    "analyze-pair": "a NIfTI/Analyze .hdr header (needs its .img file)",
    "empty": "an empty (0-byte) file",
    "unknown": "no known format",
}


def check_name(path: PathLike) -> Path:
    """Return ``path`` as a :class:`Path` if its name is valid UTF-8.

    Names that are not (e.g. Latin-1 names copied from an old system) cannot go into CSV files, logs or case ids.

    Raises:
        DataError: the name holds bytes that are not UTF-8.
    """
    p = Path(path)
    try:
        os.fsencode(p.name).decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(p, "the file name is not valid UTF-8", "rename it (e.g. with convmv)") from None
    return p


def _require_exists(p: Path) -> None:
    if p.exists():
        return
    if p.is_symlink():
        try:
            p.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a loop as RuntimeError
            raise DataError(p, "is a symbolic link loop") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise DataError(p, "is a symbolic link loop") from None
        raise DataError(p, f"is a broken symbolic link to {os.readlink(p)}")
    raise DataError(p, "does not exist", "check the path and the current working directory")


def require_file(path: PathLike) -> Path:
    """Return ``path`` as a :class:`Path` if it is an existing, non-empty regular file with a UTF-8 name.

    Raises:
        DataError: the path does not exist, is a broken link or a link loop, is a folder, is a 0-byte file, or
            its name is not valid UTF-8.
    """
    p = Path(path)
    _require_exists(p)
    check_name(p)
    if p.is_dir():
        if not any(p.iterdir()):
            raise DataError(p, "is an empty folder, expected a file")
        raise DataError(p, "is a folder, expected a file")
    if p.stat().st_size == 0:
        raise DataError(p, "is an empty (0-byte) file", "the download or copy probably failed")
    return p


def require_dir(path: PathLike, what: str = "folder") -> Path:
    """Return ``path`` as a :class:`Path` if it is an existing, non-empty folder.

    Args:
        path: the folder.
        what: how to call the folder in the error message. Defaults to ``"folder"``.

    Raises:
        DataError: the path does not exist, is not a folder, or is empty.
    """
    p = Path(path)
    _require_exists(p)
    if not p.is_dir():
        raise DataError(p, f"is a file, expected a {what}")
    if not any(p.iterdir()):
        raise DataError(p, f"is an empty {what}")
    return p


def walk_files(root: Path) -> list[Path]:
    """Every non-hidden file under ``root``, sorted, following symlinks but never visiting a folder twice.

    A symlink loop or two links to one folder are therefore listed once, and the walk always ends.
    """
    seen: set[str] = set()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(found)


def parse_bytes(text: str) -> int:
    """A number of bytes from ``"8G"``, ``"500M"``, ``"16GiB"`` or ``"1e9"`` (K, M, G, T are powers of 1024).

    Raises:
        ValueError: not a positive number of bytes.
    """
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(t[-1:], 1)
    value = int(float(t[:-1] if t[-1:] in units else t) * scale)
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive number of bytes")
    return value


_parse_bytes = parse_bytes


def set_max_image_bytes(text: str) -> int:
    """Set the memory budget of every reader of this process (and its workers): ``$MEDOOD_MAX_IMAGE_BYTES``.

    What ``medood --max-image-bytes SIZE`` calls. Returns the budget in bytes.

    Raises:
        ValueError: ``text`` is not a number of bytes.
    """
    value = parse_bytes(text)
    os.environ[MAX_IMAGE_BYTES_ENV] = str(value)
    return value


def max_image_bytes(max_bytes: int | None = None) -> int:
    """The memory budget for one decoded image: ``max_bytes`` if given, else ``$MEDOOD_MAX_IMAGE_BYTES``, else 4 GiB.

    Raises:
        ValueError: the environment variable is not a number of bytes (``"8G"``, ``"500M"``, ``"1e9"``).
    """
    if max_bytes is not None:
        return int(max_bytes)
    env = os.environ.get(MAX_IMAGE_BYTES_ENV)
    if not env:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        return _parse_bytes(env)
    except ValueError:
        raise ValueError(f"{MAX_IMAGE_BYTES_ENV}={env!r} is not a number of bytes (e.g. 8G, 500M)") from None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_memory_budget(path: PathLike, shape: tuple[int, ...], max_bytes: int | None = None) -> None:
    """Refuse an image whose decoded float32 array would exceed the memory budget, before reading its data.

    Args:
        path: the file (for the message).
        shape: the image shape from its header (all dimensions, channels included).
        max_bytes: the budget; ``None`` = :func:`max_image_bytes`.

    Raises:
        DataError: the image is larger than the budget (a header claiming an absurd size, or a genuinely huge
            scan on a small machine).
    """
    budget = max_image_bytes(max_bytes)
    need = 4 * int(np.prod([int(s) for s in shape], dtype=np.float64))
    if need > budget:
        dims = "×".join(str(int(s)) for s in shape)
        raise DataError(
            path,
            f"is {dims} voxels ({_human(need)} as float32), above the memory budget of {_human(budget)}",
            f"raise it with {MAX_IMAGE_BYTES_ENV}=... (bytes, e.g. 16G) if the machine has the memory",
        )


def _match_signature(head: bytes) -> str:
    for sig, offset, name in _SIGNATURES:
        if head[offset : offset + len(sig)] == sig:
            return name
    return "unknown"


def sniff_format(path: PathLike) -> str:
    """Guess a file's format from its magic bytes (never from its name).

    Gzip files are looked into: a gzip-compressed NIfTI gives ``"nifti1.gz"`` / ``"nifti2.gz"``, any other
    gzip content ``"gzip"``, and a gzip stream that ends before 352 bytes ``"gzip-truncated"``.

    Args:
        path: an existing file.

    Returns:
        One of ``png, jpeg, tiff, gif, bmp, zip, npy, dicom, nifti1, nifti2, analyze-pair, nifti1.gz,
        nifti2.gz, gzip, gzip-truncated, gzip-corrupt, empty, unknown``.
    """
    with open(path, "rb") as f:
        head = f.read(352)
    if not head:
        return "empty"
    kind = _match_signature(head)
    if kind != "gzip":
        return kind
    try:
        with gzip.open(path, "rb") as g:
            inner = g.read(352)
    except EOFError:
        return "gzip-truncated"
    except (OSError, zlib.error):
        return "gzip-corrupt"
    inner_kind = _match_signature(inner)
    if inner_kind in ("nifti1", "nifti2"):
        return f"{inner_kind}.gz"
    if len(inner) < 352 and inner_kind == "unknown":
        return "gzip-truncated"
    return "gzip"


def describe_format(kind: str) -> str:
    """Return a human phrase for a :func:`sniff_format` result (``"png"`` → ``"a PNG image"``)."""
    if kind.endswith(".gz"):
        return f"a gzip-compressed {_DESCRIPTIONS[kind[:-3]][2:]}"
    return _DESCRIPTIONS.get(kind, kind)


def _simplify_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return switch_endianness(meta, "<")  # type: ignore[no-any-return]


def read_with_monai(
    reader: ImageReader, path: PathLike, dtype: np.dtype | type | None = np.float32, channel_first: bool = True
) -> MetaTensor:
    """Read one file with a MONAI reader, exactly as :class:`monai.transforms.LoadImage` would.

    Unlike ``LoadImage(reader=...)`` this never falls back to other readers and never swallows the
    reader's exception, so the callers can turn it into a precise :class:`DataError`.

    Args:
        reader: a MONAI image reader instance.
        path: the file (or, for DICOM readers, folder or list of files).
        dtype: output dtype; ``None`` keeps the file's dtype. Defaults to ``np.float32``.
        channel_first: move the channel dimension first (adds one if absent). Defaults to ``True``.

    Returns:
        A MetaTensor with the reader's meta data and ``filename_or_obj`` set.
    """
    img = reader.read(path)
    try:
        array, meta = reader.get_data(img)
    finally:
        closer = getattr(img, "close", None)
        if callable(closer):
            closer()
    if dtype is not None:
        array = np.asarray(array).astype(dtype, copy=False)
    if isinstance(array, np.ndarray) and not array.flags.writeable:  # e.g. PIL's float images; torch warns
        array = array.copy()
    meta = _simplify_meta(meta)
    meta["filename_or_obj"] = os.fspath(path) if not isinstance(path, (list, tuple)) else os.fspath(path[0])
    out = MetaTensor.ensure_torch_and_prune_meta(array, meta)
    if not isinstance(out, MetaTensor):  # set_track_meta(False) was used by the caller
        out = MetaTensor(torch.as_tensor(out), meta=meta)
    if channel_first:
        out = EnsureChannelFirst()(out, meta_dict=meta)
    return out  # type: ignore[return-value]
