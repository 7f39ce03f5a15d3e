"""The classifier side of post-hoc OOD detection on 2D class-folder datasets (Kvasir-v2, GastroVision layout).

Shared by ``medood posthoc``, the ``nero_endoscopy_ood_classification`` bundle and ``scripts/bench_posthoc.py``:

* :func:`build_classifier`: small MONAI 2D networks (``resnet10`` trains in minutes on a CPU at 64x64) whose
  last layer is the ``nn.Linear`` head the post-hoc detectors hook;
* :func:`preprocessing`: ``LoadImage2Dd`` -> grey/RGBA to RGB -> resize -> ``[0, 1]`` (-> optional ImageNet
  normalisation), plus flips, small rotations and intensity jitter for training;
* :func:`class_folder_loader`: a loader of a class-folder split (OOD folders: :mod:`medood.posthoc_data`);
* :func:`train_classifier`: MONAI ``SupervisedTrainer`` (Adam, cosine decay) + ``SupervisedEvaluator`` (Ignite),
  the best validation accuracy checkpointed as ``{"model": state_dict, "config": {...}}`` (loadable with
  ``weights_only=True``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureTyped,
    Lambdad,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandFlipd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
)
from torch import Tensor, nn

from medood.data.errors import DataError
from medood.data.folders import class_folder_datalist
from medood.data.transforms import LoadImage2Dd
from medood.utils.enums import OODKeys
from medood.utils.io import atomic_path

__all__ = [
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_classifier",
    "class_folder_loader",
    "load_classifier",
    "preprocessing",
    "to_rgb",
    "train_classifier",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: MONAI 2D classifiers by name (constructor keyword arguments besides the class count).
ARCHS: dict[str, dict[str, Any]] = {
    "resnet10": {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128]},  # D = 128
    "resnet18_small": {"block": "basic", "layers": [2, 2, 2, 2], "block_inplanes": [16, 32, 64, 128]},  # D = 128
    "resnet18": {"block": "basic", "layers": [2, 2, 2, 2], "block_inplanes": [64, 128, 256, 512]},  # D = 512
    "densenet_small": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2)},
}


def build_classifier(arch: str = "resnet10", num_classes: int = 3, in_channels: int = 3) -> nn.Module:
    """A randomly initialised MONAI 2D classifier whose last registered module is its ``nn.Linear`` head.

    Args:
        arch: a key of :data:`ARCHS`. Defaults to ``"resnet10"`` (``monai.networks.nets.ResNet``, basic blocks
            ``[1, 1, 1, 1]``, widths ``[16, 32, 64, 128]``: 0.3 M parameters, 128 penultimate features).
        num_classes: number of classes. Defaults to 3.
        in_channels: input channels. Defaults to 3 (RGB).

    Raises:
        ValueError: unknown ``arch`` or fewer than 2 classes.
    """
    from monai.networks.nets import DenseNet, ResNet

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    kwargs = dict(ARCHS[arch])
    if arch.startswith("densenet"):
        return DenseNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, **kwargs)
    return ResNet(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, **kwargs)


def to_rgb(image: Tensor) -> Tensor:
    """``(1, H, W)`` grey -> 3 identical channels; ``(4, H, W)`` -> the first 3; ``(3, H, W)`` unchanged.

    Raises:
        ValueError: any other channel count.
    """
    channels = image.shape[0]
    if channels == 3:
        return image
    if channels == 1:
        return image.repeat(3, *([1] * (image.ndim - 1)))
    if channels == 4:
        return image[:3]
    raise ValueError(f"expected a grey, RGB or RGBA image, got {channels} channels (shape {tuple(image.shape)})")


def preprocessing(
    image_size: int = 64, normalize: bool = False, train: bool = False, key: str = OODKeys.IMAGE.value
) -> Compose:
    """The classifier's transforms: load, RGB, resize to ``image_size``, scale to ``[0, 1]`` (-> normalise).

    Args:
        image_size: square side the images are resized to. Defaults to 64.
        normalize: subtract the ImageNet mean and divide by its std per channel. Defaults to ``False``.
        train: add augmentation (flips on both axes, rotations up to 15 degrees, contrast / intensity jitter).
            Defaults to ``False``.
        key: the image key. Defaults to ``"image"``.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    transforms: list[Any] = [
        LoadImage2Dd(key, scale=True),
        Lambdad(key, to_rgb),
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
    root: str | os.PathLike[str],
    split: str | None,
    image_size: int = 64,
    class_names: Sequence[str] | None = None,
    train: bool = False,
    batch_size: int = 32,
    normalize: bool = False,
    num_workers: int = 0,
) -> tuple[DataLoader, list[str]]:
    """A loader of ``root/<split>/<class>/*`` (``{"image", "label", "case"}`` batches) and the class names.

    Training loaders cache the deterministic transforms and shuffle; others keep the file order.

    Raises:
        DataError: see :func:`~medood.data.folders.class_folder_datalist`.
    """
    data, names = class_folder_datalist(root, split, class_names)
    base = Path(root) / split if split else Path(root)
    for item in data:
        item[OODKeys.CASE.value] = Path(item["image"]).relative_to(base).with_suffix("").as_posix()
    transform = preprocessing(image_size, normalize, train)
    ds: Dataset = CacheDataset(data, transform, progress=False) if train else Dataset(data, transform)
    return DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=num_workers), names


def load_classifier(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a classifier saved by :func:`train_classifier`; returns ``(network in eval mode, config)``.

    Raises:
        DataError: the file is missing or is not a medood classifier checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "checkpoint does not exist", "train one with `medood posthoc train`")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(p, f"is not a readable torch checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise DataError(p, "is not a `medood posthoc train` checkpoint", "expected the keys 'model' and 'config'")
    cfg = dict(ckpt["config"])
    net = build_classifier(cfg["arch"], len(cfg["class_names"]))
    net.load_state_dict(ckpt["model"])
    return net.to(device).eval(), cfg


def _save_state(state: dict, config: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": state, "config": config}, tmp)


def _save(net: nn.Module, config: dict, path: Path) -> None:
    _save_state({k: v.detach().cpu() for k, v in net.state_dict().items()}, config, path)


def _engines(
    net: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    epochs: int,
    lr: float,
    val_interval: int,
    device: str | torch.device,
) -> tuple[Any, Any]:
    """MONAI ``SupervisedTrainer`` (Adam, cosine decay, cross-entropy) validating with a ``SupervisedEvaluator``."""
    from ignite.metrics import Accuracy
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import LrScheduleHandler, ValidationHandler

    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=1e-5)
    evaluator = SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=val_loader,
        network=net,
        decollate=False,
        key_val_metric={"val_acc": Accuracy(output_transform=lambda o: (o["pred"], o["label"]))},
    )
    handlers = [
        LrScheduleHandler(scheduler, print_lr=False),  # type: ignore[arg-type]
        ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=True),
    ]
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=epochs,
        train_data_loader=train_loader,
        network=net,
        optimizer=optimizer,
        loss_function=nn.CrossEntropyLoss(),
        decollate=False,
        train_handlers=handlers,
    )
    return trainer, evaluator


def train_classifier(
    data_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    arch: str = "resnet10",
    epochs: int = 30,
    image_size: int = 64,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    normalize: bool = False,
    device: str | torch.device = "cpu",
    val_interval: int = 1,
    num_workers: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train a classifier on ``data_root/train/<class>/``, validate on ``data_root/val/<class>/``, keep the best.

    Ignite via MONAI: ``SupervisedTrainer`` (Adam with cosine decay to 1e-5, cross-entropy) with a
    ``ValidationHandler`` running a ``SupervisedEvaluator`` (accuracy) every ``val_interval`` epochs; the best
    validation accuracy is saved to ``out_dir/model.pt`` as ``{"model": state_dict, "config": {...}}``.

    Returns:
        The config saved with the weights, including ``best_val_accuracy``, ``best_epoch`` and ``train_seconds``.

    Raises:
        DataError: missing split or class folders (validation classes must match the training classes).
    """
    from ignite.engine import Events
    from monai.utils import set_determinism

    from medood.handlers.progress import ProgressBar

    set_determinism(seed=seed)
    loader_args = (batch_size, normalize, num_workers)
    train_loader, names = class_folder_loader(data_root, "train", image_size, None, True, *loader_args)
    val_loader, _ = class_folder_loader(data_root, "val", image_size, names, False, *loader_args)
    net = build_classifier(arch, len(names)).to(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "arch": arch,
        "class_names": names,
        "image_size": image_size,
        "normalize": normalize,
        "epochs": epochs,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
    }
    trainer, evaluator = _engines(net, train_loader, val_loader, epochs, lr, val_interval, device)
    ProgressBar("loss", enabled=progress).attach(trainer)
    best = {"acc": -1.0, "epoch": 0}

    @evaluator.on(Events.COMPLETED)
    def _keep_best(engine: Any) -> None:
        acc = float(engine.state.metrics["val_acc"])
        logger.info("epoch %d: validation accuracy %.4f", trainer.state.epoch, acc)
        if acc > best["acc"]:
            best.update(acc=acc, epoch=trainer.state.epoch)
            _save(net, {**config, "best_val_accuracy": acc, "best_epoch": trainer.state.epoch}, out / "model.pt")

    start = time.perf_counter()
    trainer.run()
    config.update(best_val_accuracy=best["acc"], best_epoch=best["epoch"], train_seconds=time.perf_counter() - start)
    if best["epoch"] == 0:  # no validation ran (val_interval > epochs): keep the last weights
        _save(net, config, out / "model.pt")
    else:  # rewrite the best checkpoint with the final config (timing)
        _save_state(
            torch.load(out / "model.pt", map_location="cpu", weights_only=True)["model"], config, out / "model.pt"
        )
    logger.info("best validation accuracy %.4f at epoch %d; saved %s", best["acc"], best["epoch"], out / "model.pt")
    return config
