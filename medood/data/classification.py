"""Classifier inputs: the preprocessing of 2D class-folder images, their loaders, class-balanced sampling.

* :func:`classifier_preprocessing`: ``LoadImage2Dd`` -> grey/RGBA to RGB (:class:`~medood.transforms.ToRGBd`) ->
  resize -> ``[0, 1]`` (-> optional ImageNet normalisation), plus flips, small rotations and intensity jitter
  for training;
* :func:`class_folder_loader`: a loader of a class-folder split (``{"image", "label", "case"}`` batches); the
  OOD folders' datalists are in :mod:`medood.data.folders`;
* :func:`class_balanced_sampler` / :func:`class_balanced_loader`: inverse-class-frequency sampling with
  replacement (``WeightedRandomSampler``) for imbalanced training sets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureTyped,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandFlipd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
)
from torch.utils.data import WeightedRandomSampler

from medood.data._files import PathLike
from medood.data.folders import class_folder_datalist, relative_case
from medood.data.transforms import LoadImage2Dd
from medood.transforms.color import ToRGBd
from medood.utils.enums import OODKeys

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "class_balanced_loader",
    "class_balanced_sampler",
    "class_folder_loader",
    "classifier_preprocessing",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classifier_preprocessing(
    image_size: int = 64, normalize: bool = False, train: bool = False, key: str = OODKeys.IMAGE.value
) -> Compose:
    """The classifier's transforms: load, RGB, resize to ``image_size``, scale to ``[0, 1]`` (-> normalise).

    Args:
        image_size: square side the images are resized to. Defaults to 64.
        normalize: subtract the ImageNet mean and divide by its std per channel. Defaults to ``False``.
        train: add augmentation (flips on both axes, rotations up to 15 degrees, contrast / intensity jitter).
            Defaults to ``False``.
        key: the image key. Defaults to ``"image"``.

    Raises:
        ValueError: ``image_size`` below 8.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    transforms: list[Any] = [
        LoadImage2Dd(key, scale=True),
        ToRGBd(key),
        Resized(key, spatial_size=(image_size, image_size), mode="area"),
    ]
    if train:
        transforms += [
            RandFlipd(key, prob=0.5, spatial_axis=0),
            RandFlipd(key, prob=0.5, spatial_axis=1),
            RandRotated(key, range_x=0.26, prob=0.5, padding_mode="border"),
            RandAdjustContrastd(key, prob=0.3, gamma=(0.8, 1.25)),
            RandScaleIntensityd(key, factors=0.15, prob=0.3),
            RandShiftIntensityd(key, offsets=0.05, prob=0.3),
        ]
    if normalize:
        transforms.append(
            NormalizeIntensityd(
                key, subtrahend=np.asarray(IMAGENET_MEAN), divisor=np.asarray(IMAGENET_STD), channel_wise=True
            )
        )
    transforms.append(EnsureTyped(key, dtype=torch.float32, track_meta=False))
    return Compose(transforms)


def class_folder_loader(
    root: PathLike,
    split: str | None,
    image_size: int = 64,
    class_names: Sequence[str] | None = None,
    train: bool = False,
    batch_size: int = 32,
    normalize: bool = False,
    num_workers: int = 0,
) -> tuple[DataLoader, list[str]]:
    """A loader of ``root/<split>/<class>/*`` (``{"image", "label", "case"}`` batches) and the class names.

    Training loaders cache the deterministic transforms, augment and shuffle; others keep the file order.

    Raises:
        DataError: see :func:`~medood.data.folders.class_folder_datalist`.
    """
    data, names = class_folder_datalist(root, split, class_names)
    base = Path(root) / split if split else Path(root)
    for item in data:
        item[OODKeys.CASE.value] = relative_case(item["image"], base)
    transform = classifier_preprocessing(image_size, normalize, train)
    ds: Dataset = CacheDataset(data, transform, progress=False) if train else Dataset(data, transform)
    return DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=num_workers), names


def class_balanced_sampler(
    labels: Sequence[int] | torch.Tensor, num_samples: int | None = None, generator: torch.Generator | None = None
) -> WeightedRandomSampler:
    """Draw items with probability inversely proportional to their class frequency, with replacement.

    Every class is then drawn equally often on average. One epoch draws ``num_samples`` items.

    Args:
        labels: the class of every item of the dataset, in dataset order.
        num_samples: draws per epoch. Defaults to the dataset size.
        generator: the random generator. Defaults to torch's global one.

    Raises:
        ValueError: no labels or a negative label.
    """
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if y.numel() == 0:
        raise ValueError("class_balanced_sampler needs at least one label")
    if (y < 0).any():
        raise ValueError(f"labels must be >= 0 class indices, got {sorted(set(y[y < 0].tolist()))}")
    counts = torch.bincount(y).double()
    weights = (1.0 / counts)[y]
    n = y.numel() if num_samples is None else num_samples
    return WeightedRandomSampler(weights, n, replacement=True, generator=generator)  # type: ignore[arg-type]


def _dataset_labels(dataset: Any, key: str) -> list[int]:
    items = getattr(dataset, "data", None)
    if not isinstance(items, Sequence) or not all(isinstance(d, dict) and key in d for d in items):
        raise ValueError(
            f"cannot read the labels of a {type(dataset).__name__}: pass labels=..., or use a MONAI Dataset whose "
            f"items are dicts with a {key!r} key"
        )
    return [int(d[key]) for d in items]


def class_balanced_loader(
    loader: DataLoader, labels: Sequence[int] | torch.Tensor | None = None, key: str = OODKeys.LABEL.value
) -> DataLoader:
    """The same loader (dataset, batch size, workers, collation) drawing with :func:`class_balanced_sampler`.

    Args:
        loader: a training loader.
        labels: the class of every item of ``loader.dataset``. Defaults to ``item[key]`` of the dataset's datalist
            (a MONAI ``Dataset`` / ``CacheDataset`` of dicts).
        key: the label key of the datalist items. Defaults to ``"label"``.

    Raises:
        ValueError: the labels cannot be found.
    """
    y = _dataset_labels(loader.dataset, key) if labels is None else labels
    sampler = class_balanced_sampler(y)
    logger.info("class-balanced sampling: class counts %s", torch.bincount(torch.as_tensor(y)).tolist())
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )
