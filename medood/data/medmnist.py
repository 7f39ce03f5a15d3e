"""MedMNIST ``.npz`` files (PathMNIST, DermaMNIST, ..., any size incl. ``_224``) without the medmnist package.

File layout (as written by medmnist): keys ``train_images, train_labels, val_images, val_labels, test_images,
test_labels``; images ``uint8`` ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB); labels ``(N, 1)`` (one class
index) or ``(N, k)`` (multi-label, e.g. ChestMNIST).

Memory: ``np.load(path, mmap_mode="r")`` cannot memory-map members of an ``.npz`` (ZIP) archive, so
:class:`MedMNISTDataset` reads the ZIP directory itself:

- a member stored **uncompressed** (``np.savez``) is memory-mapped in place (``np.memmap`` at the member's data
  offset): nothing is read until an item is requested;
- a **compressed** member (``np.savez_compressed``, which the official files use) cannot be mapped. With
  ``cache_dir`` set, it is decompressed once to ``<cache_dir>/<file stem>_<split>_images.npy`` and that file is
  memory-mapped (later runs reuse it); without ``cache_dir`` the split's images are decompressed into memory
  once, when the dataset is created (a 224×224 RGB train split of 90k images needs ~13.5 GB: use ``cache_dir``).

Labels are always loaded into memory (they are small). Headers are checked before any image data is read.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from medood.data._files import PathLike, require_file
from medood.data.errors import DataError
from medood.utils.io import atomic_path

__all__ = ["MEDMNIST_SPLITS", "MedMNISTDataset", "medmnist_evaluation_dataset", "read_npz_header", "validate_npz"]

logger = logging.getLogger(__name__)

MEDMNIST_SPLITS = ("train", "val", "test")


def read_npz_header(zf: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Read the ``.npy`` header of one ``.npz`` member without reading its data.

    Args:
        zf: the open archive.
        key: the array name (without ``.npy``).

    Returns:
        ``(shape, dtype, fortran_order, header_length_in_bytes)``.
    """
    with zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), int(f.tell())


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored member's data in the archive (after the ZIP local file header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        raise DataError(path, f"corrupt ZIP local header for member {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _check_split_headers(path: Path, zf: zipfile.ZipFile, split: str) -> tuple[int, ...]:
    """Check dtypes, ndims and counts of one split from the ``.npy`` headers; return the image shape."""
    ikey, lkey = f"{split}_images", f"{split}_labels"
    ishape, idtype, _, _ = read_npz_header(zf, ikey)
    lshape, ldtype, _, _ = read_npz_header(zf, lkey)
    for key, dtype in ((ikey, idtype), (lkey, ldtype)):
        if dtype.hasobject:  # its data is a pickle: loading it (allow_pickle=True) could run code
            raise DataError(
                path,
                f"refused: {key} is an object array, a pickle of Python objects (code) — it is never loaded "
                "(allow_pickle=False)",
                "re-save it with plain numeric arrays",
            )
    if idtype != np.uint8:
        raise DataError(path, f"{ikey} has dtype {idtype}, expected uint8")
    if not (len(ishape) == 3 or (len(ishape) == 4 and ishape[-1] in (1, 3))):
        raise DataError(path, f"{ikey} has shape {ishape}, expected (N, H, W) or (N, H, W, 3)")
    if len(lshape) not in (1, 2) or not (np.issubdtype(ldtype, np.integer) or ldtype == np.bool_):
        raise DataError(path, f"{lkey} has shape {lshape} and dtype {ldtype}, expected integer (N, k)")
    if ishape[0] != lshape[0]:
        raise DataError(path, f"{ikey} holds {ishape[0]} images but {lkey} holds {lshape[0]} labels")
    return ishape


def _read_labels(path: Path, zf: zipfile.ZipFile, split: str) -> np.ndarray:
    with zf.open(f"{split}_labels.npy") as f:
        labels = np.lib.format.read_array(f, allow_pickle=False)
    labels = labels.reshape(len(labels), -1).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(path, f"{split}_labels holds negative labels (min {labels.min()})")
    return labels


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DataError(path, "is not a valid .npz file (not a ZIP archive, or truncated)") from e


def validate_npz(path: PathLike) -> list[str]:
    """Check a MedMNIST ``.npz`` without keeping its images in memory; return the splits it holds.

    Every split present (a ``<split>_images`` or ``<split>_labels`` key) gets the checks of
    :class:`MedMNISTDataset`, and its image member is streamed through once so a corrupt (CRC) member is found.

    Raises:
        DataError: as :class:`MedMNISTDataset`, or no split at all.
    """
    p = require_file(path)
    with _open_zip(p) as zf:
        keys = sorted(n.removesuffix(".npy") for n in zf.namelist())
        splits = [s for s in MEDMNIST_SPLITS if f"{s}_images" in keys or f"{s}_labels" in keys]
        if not splits:
            raise DataError(p, "holds no <split>_images / <split>_labels arrays", f"keys present: {keys}")
        for split in splits:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in keys:
                    raise DataError(p, f"has no key {key!r}", f"keys present: {keys}")
            try:
                _check_split_headers(p, zf, split)
                _read_labels(p, zf, split)
                with zf.open(f"{split}_images.npy") as f:
                    while f.read(16 << 20):
                        pass
            except DataError:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
                raise DataError(p, f"has a corrupt {split!r} member: {type(e).__name__}: {e}") from e
    return splits


class MedMNISTDataset(Dataset):
    """One split of a MedMNIST ``.npz`` file as a map-style dataset of dictionaries.

    Items are ``{"image": float32 tensor (C, H, W) in [0, 1], "label": int (single label) or float32 tensor (k,)
    (multi-label), "case": "<file stem>_<split>_<index>"}``; ``transform`` (e.g. a MONAI ``Compose`` of
    dictionary transforms) is applied to that dictionary. See the module docstring for how images are
    memory-mapped or loaded.

    Args:
        path: the ``.npz`` file.
        split: ``"train"``, ``"val"`` or ``"test"``. Defaults to ``"train"``.
        transform: callable applied to each item dictionary. Defaults to ``None``.
        cache_dir: folder where compressed image arrays are decompressed once to ``.npy`` files that can be
            memory-mapped. Defaults to ``None`` (decompress into memory).

    Raises:
        DataError: the file is missing or not an ``.npz``, the split is unknown, a key is missing (the message
            lists the keys present), images and labels differ in count, an array has a wrong dtype (object arrays,
            which would need unpickling, included) or ndim, labels are negative, or a member is corrupt.
    """

    def __init__(
        self,
        path: PathLike,
        split: str = "train",
        transform: Callable[[dict[str, Any]], Any] | None = None,
        cache_dir: PathLike | None = None,
    ) -> None:
        self.path = require_file(path)
        self.split = split
        self.transform = transform
        self.stem = self.path.name.removesuffix(".npz")
        self._mmap_spec: tuple[Path, np.dtype, int, tuple[int, ...]] | None = None
        with _open_zip(self.path) as zf:
            keys = sorted(n.removesuffix(".npy") for n in zf.namelist())
            if split not in MEDMNIST_SPLITS:
                present = sorted({k.rsplit("_", 1)[0] for k in keys if k.endswith(("_images", "_labels"))})
                raise DataError(
                    self.path,
                    f"unknown split {split!r}: use one of {list(MEDMNIST_SPLITS)}",
                    f"splits in this file: {present}",
                )
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in keys:
                    raise DataError(self.path, f"has no key {key!r}", f"keys present: {keys}")
            try:
                img_shape = self._check_headers(zf)
                self.labels = self._load_labels(zf)
                self.images = self._open_images(zf, img_shape, cache_dir)
            except DataError:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
                raise DataError(
                    self.path, f"has a corrupt {split!r} member: {type(e).__name__}: {e}", "re-download the file"
                ) from e

    def _check_headers(self, zf: zipfile.ZipFile) -> tuple[int, ...]:
        return _check_split_headers(self.path, zf, self.split)

    def _load_labels(self, zf: zipfile.ZipFile) -> np.ndarray:
        return _read_labels(self.path, zf, self.split)

    def _open_images(self, zf: zipfile.ZipFile, shape: tuple[int, ...], cache_dir: PathLike | None) -> np.ndarray:
        key = f"{self.split}_images"
        info = zf.getinfo(f"{key}.npy")
        _, dtype, fortran, header_len = read_npz_header(zf, key)
        if info.compress_type == zipfile.ZIP_STORED and not fortran:
            offset = _member_data_offset(self.path, info) + header_len
            logger.debug("%s: memory-mapping %s at offset %d", self.path, key, offset)
            self._mmap_spec = (self.path, dtype, offset, shape)
            return self._reopen()
        if cache_dir is not None:
            dest = Path(cache_dir) / f"{self.stem}_{self.split}_images.npy"
            if not dest.exists() or dest.stat().st_size != info.file_size:
                logger.info("%s: decompressing %s to %s", self.path, key, dest)
                with zf.open(info) as src, atomic_path(dest) as tmp, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, length=16 << 20)
            mapped = np.load(dest, mmap_mode="r")
            self._mmap_spec = (dest, mapped.dtype, int(mapped.offset), mapped.shape)
            return mapped
        nbytes = int(np.prod(shape))
        logger.info(
            "%s: loading %s into memory (%.1f MB); pass cache_dir to memory-map instead", self.path, key, nbytes / 2**20
        )
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def _reopen(self) -> np.ndarray:
        path, dtype, offset, shape = self._mmap_spec  # type: ignore[misc]
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle memory-mapped images as their file location, not their data (DataLoader workers, spawn)."""
        state = self.__dict__.copy()
        if self._mmap_spec is not None:
            state["images"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._mmap_spec is not None:
            self.images = self._reopen()

    @property
    def multi_label(self) -> bool:
        """Whether labels are multi-label vectors ``(k,)`` rather than single class indices."""
        return self.labels.shape[1] > 1

    @property
    def num_classes(self) -> int:
        """Number of classes: ``k`` for multi-label files, else the largest class index + 1."""
        return int(self.labels.shape[1]) if self.multi_label else int(self.labels.max(initial=-1)) + 1

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        img = np.asarray(self.images[index], dtype=np.float32) / 255.0
        img = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
        label: int | torch.Tensor
        if self.multi_label:
            label = torch.as_tensor(self.labels[index], dtype=torch.float32)
        else:
            label = int(self.labels[index, 0])
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(img)),
            "label": label,
            "case": f"{self.stem}_{self.split}_{index:06d}",
        }
        return self.transform(item) if self.transform is not None else item

    def __repr__(self) -> str:
        return f"MedMNISTDataset({os.fspath(self.path)!r}, split={self.split!r}, n={len(self)})"


class _Tagged(Dataset):
    """Items of ``base`` with extra fields (after ``base``'s transform)."""

    def __init__(self, base: MedMNISTDataset, **fields: Any) -> None:
        self.base, self.fields = base, fields

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Any:
        return {**self.base[index], **self.fields}


def medmnist_evaluation_dataset(
    id_path: PathLike,
    ood_paths: Sequence[PathLike] = (),
    split: str = "test",
    transform: Callable[[dict[str, Any]], Any] | None = None,
    cache_dir: PathLike | None = None,
) -> ConcatDataset:
    """The ``split`` of an ID MedMNIST file followed by the same split of each OOD file, for an OOD evaluation.

    ID items get ``is_ood = 0`` and ``ood_set = "id"``; the items of each OOD file ``is_ood = 1``, ``label = -1`` and
    ``ood_set`` = the file's stem (e.g. ``dermamnist_64``). ``transform`` is applied to every item before the
    fields are added.

    Raises:
        DataError: see :class:`MedMNISTDataset`.
    """
    parts: list[Dataset] = [_Tagged(MedMNISTDataset(id_path, split, transform, cache_dir), is_ood=0, ood_set="id")]
    for path in ood_paths:
        ood = MedMNISTDataset(path, split, transform, cache_dir)
        parts.append(_Tagged(ood, is_ood=1, ood_set=ood.stem, label=-1))
    return ConcatDataset(parts)
