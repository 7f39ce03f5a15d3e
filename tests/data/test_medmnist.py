"""MedMNIST .npz: grey/RGB/multi-label items, memory mapping, the decompression cache, and bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from medood.data import DataError
from medood.data.medmnist import MedMNISTDataset


def _arrays(n: int = 6, size: int = 16, rgb: bool = False, k: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, count in (("train", n), ("val", 2), ("test", 3)):
        shape = (count, size, size, 3) if rgb else (count, size, size)
        out[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        out[f"{split}_labels"] = rng.integers(0, 2 if k > 1 else 7, (count, k)).astype(np.uint8)
    return out


def _save(path: Path, arrays: dict[str, np.ndarray], compressed: bool = True) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def test_grey_items_are_chw_in_unit_range(tmp_path: Path) -> None:
    arrays = _arrays()
    ds = MedMNISTDataset(_save(tmp_path / "pathmnist.npz", arrays), split="train")
    assert len(ds) == 6
    item = ds[1]
    assert item["image"].dtype == torch.float32
    assert tuple(item["image"].shape) == (1, 16, 16)
    np.testing.assert_allclose(item["image"][0].numpy(), arrays["train_images"][1] / 255.0, rtol=1e-6)
    assert item["label"] == int(arrays["train_labels"][1, 0])
    assert item["case"] == "pathmnist_train_000001"


def test_rgb_224_and_multilabel(tmp_path: Path) -> None:
    arrays = _arrays(n=2, size=224, rgb=True, k=5)
    ds = MedMNISTDataset(_save(tmp_path / "chest_224.npz", arrays), split="test")
    item = ds[2]
    assert tuple(item["image"].shape) == (3, 224, 224)
    np.testing.assert_allclose(item["image"][:, 5, 7].numpy(), arrays["test_images"][2, 5, 7] / 255.0, rtol=1e-6)
    assert ds.multi_label
    assert ds.num_classes == 5
    assert item["label"].tolist() == arrays["test_labels"][2].astype(float).tolist()


def test_uncompressed_file_is_memory_mapped(tmp_path: Path) -> None:
    arrays = _arrays(rgb=True)
    ds = MedMNISTDataset(_save(tmp_path / "derma.npz", arrays, compressed=False), split="val")
    assert isinstance(ds.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(ds.images), arrays["val_images"])


def test_compressed_file_uses_the_cache_dir(tmp_path: Path) -> None:
    arrays = _arrays()
    path = _save(tmp_path / "derma.npz", arrays)
    ds = MedMNISTDataset(path, split="train", cache_dir=tmp_path / "cache")
    cached = tmp_path / "cache" / "derma_train_images.npy"
    assert cached.is_file()
    assert isinstance(ds.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(ds.images), arrays["train_images"])
    again = MedMNISTDataset(path, split="train", cache_dir=tmp_path / "cache")  # reuses the cache
    np.testing.assert_array_equal(again[3]["image"].numpy(), ds[3]["image"].numpy())


def test_transform_is_applied_to_the_item(tmp_path: Path) -> None:
    ds = MedMNISTDataset(_save(tmp_path / "p.npz", _arrays()), transform=lambda d: {**d, "image": d["image"] * 2})
    assert float(ds[0]["image"].max()) > 1.0


def _drop_key(tmp: Path) -> tuple[Path, str]:
    arrays = _arrays()
    del arrays["val_labels"]
    return _save(tmp / "nolabels.npz", arrays), r"has no key 'val_labels'.*keys present: \['test_images'"


def _count_mismatch(tmp: Path) -> tuple[Path, str]:
    arrays = _arrays()
    arrays["val_labels"] = arrays["val_labels"][:1]
    return _save(tmp / "short.npz", arrays), "val_images holds 2 images but val_labels holds 1 labels"


def _float_images(tmp: Path) -> tuple[Path, str]:
    arrays = _arrays()
    arrays["val_images"] = arrays["val_images"].astype(np.float32)
    return _save(tmp / "float.npz", arrays), "dtype float32, expected uint8"


def _bad_ndim(tmp: Path) -> tuple[Path, str]:
    arrays = _arrays()
    arrays["val_images"] = arrays["val_images"].reshape(2, -1)
    return _save(tmp / "flat.npz", arrays), r"val_images has shape \(2, 256\)"


def _not_zip(tmp: Path) -> tuple[Path, str]:
    np.save(tmp / "plain.npy", np.zeros(3))
    return (tmp / "plain.npy").rename(tmp / "plain.npz"), "not a valid .npz"


@pytest.mark.parametrize("make", [_drop_key, _count_mismatch, _float_images, _bad_ndim, _not_zip])
def test_bad_files(tmp_path: Path, make) -> None:
    path, problem = make(tmp_path)
    with pytest.raises(DataError, match=rf"{path.name}: .*{problem}"):
        MedMNISTDataset(path, split="val")


def test_bad_split_name(tmp_path: Path) -> None:
    path = _save(tmp_path / "p.npz", _arrays())
    with pytest.raises(DataError, match=r"p\.npz: unknown split 'validation'.*\['test', 'train', 'val'\]"):
        MedMNISTDataset(path, split="validation")


def test_pickling_does_not_copy_memory_mapped_images(tmp_path: Path) -> None:
    arrays = _arrays(size=64, rgb=True)
    ds = MedMNISTDataset(_save(tmp_path / "big.npz", arrays, compressed=False), split="train")
    blob = pickle.dumps(ds)
    assert len(blob) < arrays["train_images"].nbytes / 4, "images must travel as a file reference"
    clone = pickle.loads(blob)
    assert isinstance(clone.images, np.memmap)
    np.testing.assert_array_equal(clone[4]["image"].numpy(), ds[4]["image"].numpy())


def test_evaluation_dataset_tags_id_and_ood_items(tmp_path: Path) -> None:
    from medood.data.medmnist import medmnist_evaluation_dataset

    ident = _save(tmp_path / "pathmnist_64.npz", _arrays(rgb=True))
    other = _save(tmp_path / "dermamnist.npz", _arrays(n=3, rgb=True, seed=1))
    ds = medmnist_evaluation_dataset(ident, [other], split="test", transform=lambda d: {**d, "seen": True})
    assert len(ds) == 3 + 3  # the test splits
    first, last = ds[0], ds[5]
    assert (first["is_ood"], first["ood_set"], first["case"]) == (0, "id", "pathmnist_64_test_000000")
    assert first["label"] >= 0
    assert (last["is_ood"], last["ood_set"], last["label"], last["case"]) == (
        1,
        "dermamnist",
        -1,
        "dermamnist_test_000002",
    )
    assert first["seen"] and last["seen"], "the transform runs on every item"
