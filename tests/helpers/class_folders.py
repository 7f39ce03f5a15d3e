"""Tiny class-folder image datasets (the Kvasir-v2 / GastroVision layout) for post-hoc CLI and bundle tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ["normal_mucosa", "polyp", "ulcer_inflammation"]
COLOURS = {"normal_mucosa": (200, 90, 90), "polyp": (150, 60, 40), "ulcer_inflammation": (230, 220, 200)}
#: detector settings that fit on a handful of training images (KNN k, NECO and NERO dimensions)
SMALL_FIT = {"knn": {"k": 3}, "neco": {"neco_dim": 4}, "nero": {"k": 8}}


def write_pngs(folder: Path, n: int, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 20) -> None:
    """``n`` noisy RGB PNGs of one colour in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.clip(np.array(colour)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:02d}.png")


def make_class_folders(root: Path, n_train: int = 6, n_eval: int = 3) -> Path:
    """``root/{train,val,test}/<class>/*.png`` and ``root/ood_{near,far}/<kind>/*.png`` (3 images per OOD set;
    ``ood_far/grey`` holds single-channel PNGs)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        for name in CLASSES:
            write_pngs(root / split / name, n, COLOURS[name], rng)
    write_pngs(root / "ood_near" / "blue_dye", 3, (40, 60, 200), rng)
    write_pngs(root / "ood_near" / "instrument", 3, (128, 128, 128), rng)
    write_pngs(root / "ood_far" / "xray", 3, (30, 30, 30), rng)
    (root / "ood_far" / "grey").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / "ood_far" / "grey" / f"g{i}.png")
    return root


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block (tiny 2D nets are fastest so, and a busy 2-core machine does not
    thrash); the previous thread count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_medmnist_npz(path: Path, colours: list[tuple[int, int, int]], n: int, size: int = 12) -> Path:
    """A MedMNIST-style ``.npz`` (``{train,val,test}_{images,labels}``): ``n`` noisy RGB ``size``-pixel images per
    split, the class ``k`` of image ``i`` being ``i % len(colours)`` and its colour ``colours[k]``."""
    rng = np.random.default_rng(len(colours))
    arrays = {}
    for split in ("train", "val", "test"):
        labels = np.arange(n) % len(colours)
        imgs = np.stack([np.clip(np.array(colours[k]) + rng.normal(0, 20, (size, size, 3)), 0, 255) for k in labels])
        arrays[f"{split}_images"] = imgs.astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path
