"""MedMNIST ``.npz`` files (``MedMNISTDataset``, ``validate_npz``): archive, keys, arrays, labels."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from medood.data.medmnist import MedMNISTDataset, validate_npz
from tests.reliability.corpus.registry import bad


def npz(path: Path, compressed: bool = True, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def medmnist_arrays(n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
        out[f"{split}_labels"] = rng.integers(0, 3, (n, 1), dtype=np.uint8)
    return out


npz_kind = partial(bad, "npz", read=MedMNISTDataset)


@npz_kind("not_a_zip", "not a valid .npz")
def _(tmp: Path) -> Path:
    np.save(tmp / "plain.npy", np.zeros(4))
    return (tmp / "plain.npy").rename(tmp / "plain.npz")


@npz_kind("truncated", "not a valid .npz.*truncated")
def _(tmp: Path) -> Path:
    raw = npz(tmp / "full.npz", **medmnist_arrays()).read_bytes()
    (tmp / "cut.npz").write_bytes(raw[: len(raw) * 2 // 3])
    return tmp / "cut.npz"


@npz_kind("missing_keys", "has no key 'train_labels'.*keys present: \\['test_images'")
def _(tmp: Path) -> Path:
    arrays = medmnist_arrays()
    del arrays["train_labels"]
    return npz(tmp / "nolabels.npz", **arrays)


@npz_kind("mismatched_lengths", "holds 6 images but train_labels holds 5 labels")
def _(tmp: Path) -> Path:
    arrays = medmnist_arrays()
    arrays["train_labels"] = arrays["train_labels"][:5]
    return npz(tmp / "lengths.npz", **arrays)


@npz_kind("float_images", "dtype float64, expected uint8")
def _(tmp: Path) -> Path:
    arrays = medmnist_arrays()
    arrays["train_images"] = arrays["train_images"] / 255.0
    return npz(tmp / "floats.npz", **arrays)


@npz_kind("wrong_ndim", "has shape \\(6, 192\\)")
def _(tmp: Path) -> Path:
    arrays = medmnist_arrays()
    arrays["train_images"] = arrays["train_images"].reshape(6, -1)
    return npz(tmp / "flat.npz", **arrays)


@npz_kind("pickled_object_labels", r"refused: train_labels is an object array, a pickle of Python objects \(code\)")
def _(tmp: Path) -> Path:
    arrays: dict[str, np.ndarray] = medmnist_arrays()
    arrays["train_labels"] = np.array([{"label": i} for i in range(6)], dtype=object)
    return npz(tmp / "pickled.npz", **arrays)


@npz_kind("negative_labels", "negative labels")
def _(tmp: Path) -> Path:
    arrays = medmnist_arrays()
    arrays["train_labels"] = -np.ones((6, 1), np.int64)
    return npz(tmp / "negative.npz", **arrays)


@bad(
    "npz",
    "unknown_split",
    "unknown split 'valid'.*splits in this file: \\['test'\\]",
    partial(MedMNISTDataset, split="valid"),
)
def _(tmp: Path) -> Path:
    arrays = {k: v for k, v in medmnist_arrays().items() if k.startswith("test")}
    return npz(tmp / "testonly.npz", **arrays)


@bad("npz", "corrupt_member_crc", "corrupt 'train' member", validate_npz)
def _(tmp: Path) -> Path:
    arrays = medmnist_arrays(200)
    arrays["train_images"] = np.zeros((200, 8, 8, 3), np.uint8)  # compresses well: a flipped byte breaks the CRC
    raw = bytearray(npz(tmp / "crc.npz", **arrays).read_bytes())
    start = raw.index(b"train_images.npy") + len("train_images.npy") + 200
    raw[start] ^= 0x55
    (tmp / "crc.npz").write_bytes(bytes(raw))
    return tmp / "crc.npz"
