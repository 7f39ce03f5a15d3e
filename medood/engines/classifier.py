"""Train classifiers with Ignite: a thin layer on MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``.

:func:`train_classifier` trains any ``nn.Module`` classifier, 2D or 3D, single-output or multi-exit (a network
returning a list / tuple of exit logits, the final exit last), with a pluggable loss (default cross-entropy;
:class:`~medood.losses.classification.MultiExitLoss` for multi-exit networks), Adam or SGD, optional cosine annealing
and optional class-balanced sampling. It validates every ``val_interval`` epochs on the **validation** loader,
keeps the weights with the best validation accuracy (or loss), writes them atomically as
``{"model": state_dict, "config": {...}}`` (:func:`~medood.utils.checkpoints.save_checkpoint`) and returns the
network holding them.

:func:`train_folder_classifier` is ``medood posthoc train``: a MONAI classifier (:mod:`medood.networks.classifiers`)
on ``ROOT/train/<class>/``, selected on ``ROOT/val/<class>/``; :func:`load_classifier` rebuilds it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from medood.data.classification import class_balanced_loader, class_folder_loader
from medood.engines.resume import TrainingCheckpoint
from medood.handlers.progress import ProgressBar
from medood.networks.classifiers import build_classifier
from medood.utils.checkpoints import load_checkpoint, save_checkpoint
from medood.utils.config import as_flag
from medood.utils.errors import DataError

__all__ = [
    "TrainSettings",
    "TrainedClassifier",
    "classifier_engines",
    "final_logits",
    "load_classifier",
    "train_classifier",
    "train_folder_classifier",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`train_classifier` trains.

    Args:
        epochs: passes over the training loader. Defaults to 30.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum`` and ``nesterov``). Defaults to ``"adam"``.
        lr: learning rate. Defaults to 1e-3.
        momentum: SGD momentum. Defaults to 0.9.
        nesterov: SGD Nesterov momentum. Defaults to ``False``.
        weight_decay: L2 weight decay of either optimizer. Defaults to 0.
        scheduler: ``"cosine"`` (``CosineAnnealingLR`` over ``epochs`` down to ``eta_min``, stepped per epoch) or
            ``None`` (a constant learning rate). Defaults to ``"cosine"``.
        eta_min: the cosine schedule's final learning rate. Defaults to 1e-5.
        val_interval: validate every this many epochs. Defaults to 1.
        select: keep the weights with the best validation ``"accuracy"`` (highest; of the final exit) or
            ``"loss"`` (lowest; the training loss function). Defaults to ``"accuracy"``.
        class_balanced: draw training items with inverse-class-frequency weights, with replacement
            (:func:`~medood.data.classification.class_balanced_loader`). Defaults to ``False``.
        seed: ``monai.utils.set_determinism(seed)`` before training (data order, augmentation, dropout); seed the
            network's initialisation yourself before building it. ``None`` leaves the random state as it is.
            Defaults to ``None``.
    """

    epochs: int = 30
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    scheduler: Literal["cosine"] | None = "cosine"
    eta_min: float = 1e-5
    val_interval: int = 1
    select: Literal["accuracy", "loss"] = "accuracy"
    class_balanced: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.val_interval < 1:
            raise ValueError(f"epochs and val_interval must be >= 1, got {self.epochs} and {self.val_interval}")
        if self.lr <= 0 or self.weight_decay < 0 or self.momentum < 0:
            raise ValueError("lr must be > 0, weight_decay and momentum >= 0")
        for name, value, choices in (
            ("optimizer", self.optimizer, ("adam", "sgd")),
            ("scheduler", self.scheduler, ("cosine", None)),
            ("select", self.select, ("accuracy", "loss")),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")

    @property
    def metric(self) -> str:
        """The name of the validation metric: ``"val_accuracy"`` or ``"val_loss"``."""
        return f"val_{self.select}"


class TrainedClassifier(NamedTuple):
    """What :func:`train_classifier` returns.

    Attributes:
        network: the trained network, holding the validation-selected weights, in eval mode.
        best_epoch: the epoch of those weights (0 = no validation ran: the last weights).
        best_value: their validation accuracy or loss (NaN when no validation ran).
        metric: ``"val_accuracy"`` or ``"val_loss"``.
        history: ``(epoch, value)`` of every validation.
        seconds: the training time.
    """

    network: nn.Module
    best_epoch: int
    best_value: float
    metric: str
    history: list[tuple[int, float]]
    seconds: float


def final_logits(pred: Tensor | Sequence[Tensor]) -> Tensor:
    """The final exit's logits: ``pred`` itself, or the last element of a multi-exit network's list / tuple."""
    return pred if isinstance(pred, Tensor) else pred[-1]


def _optimizer(network: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            network.parameters(), lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay
        )
    return torch.optim.Adam(network.parameters(), lr=s.lr, weight_decay=s.weight_decay)


def classifier_engines(
    network: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    settings: TrainSettings,
    loss_function: nn.Module,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """MONAI ``SupervisedTrainer`` validating with a ``SupervisedEvaluator`` every ``settings.val_interval`` epochs.

    The evaluator's key metric, ``settings.metric``, is the accuracy of :func:`final_logits` or the mean of
    ``loss_function`` (:func:`train_classifier` selects the weights on it; the evaluator's own ``best_metric``
    assumes higher is better). Returns ``(trainer, evaluator)``; add handlers before ``trainer.run()``. The cosine
    schedule (or ``None``) is ``trainer.lr_scheduler`` (what a resumed run restores).
    """
    from ignite.metrics import Accuracy, Loss
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import LrScheduleHandler, ValidationHandler

    optimizer = _optimizer(network, settings)
    if settings.select == "accuracy":
        metric: Any = Accuracy(output_transform=lambda o: (final_logits(o["pred"]), o["label"]))
    else:
        metric = Loss(loss_function, output_transform=lambda o: (o["pred"], o["label"]))
    evaluator = SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=val_loader,  # type: ignore[arg-type]
        network=network,
        decollate=False,
        key_val_metric={settings.metric: metric},
    )
    handlers: list[Any] = []
    if settings.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=settings.epochs, eta_min=settings.eta_min
        )
        handlers.append(LrScheduleHandler(scheduler, print_lr=False))  # type: ignore[arg-type]
    handlers.append(ValidationHandler(validator=evaluator, interval=settings.val_interval, epoch_level=True))
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=settings.epochs,
        train_data_loader=train_loader,  # type: ignore[arg-type]
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        decollate=False,
        train_handlers=handlers,
    )
    trainer.lr_scheduler = scheduler if settings.scheduler == "cosine" else None  # type: ignore[attr-defined]
    return trainer, evaluator


def _cpu_state(network: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}


class _KeepBest:
    """Evaluator handler: after each validation, keep (and save) the weights if the value is the best so far."""

    def __init__(
        self, network: nn.Module, trainer: Any, metric: str, lower_is_better: bool, path: Any, config: dict | None
    ) -> None:
        self.network, self.trainer, self.metric, self.lower = network, trainer, metric, lower_is_better
        self.path, self.config = path, dict(config or {})
        self.value, self.epoch = math.nan, 0
        self.state: dict[str, Tensor] | None = None
        self.history: list[tuple[int, float]] = []

    def __call__(self, engine: Any) -> None:
        value, epoch = float(engine.state.metrics[self.metric]), self.trainer.state.epoch
        self.history.append((epoch, value))
        logger.info("epoch %d: %s %.4f", epoch, self.metric, value)
        improved = value < self.value if self.lower else value > self.value
        if self.state is None or improved:
            self.value, self.epoch, self.state = value, epoch, _cpu_state(self.network)
            self.save()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to keep selecting: the best value, its epoch and weights, the history."""
        history = torch.tensor(self.history, dtype=torch.float64).reshape(-1, 2)
        return {"value": self.value, "epoch": self.epoch, "history": history, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (``TrainingCheckpoint`` resume)."""
        self.value, self.epoch, self.state = float(state["value"]), int(state["epoch"]), state["state"]
        self.history = [(int(e), float(v)) for e, v in state["history"].tolist()]

    def save(self, **extra: Any) -> None:
        """Write the kept weights with the config, the best value and epoch, and ``extra``."""
        if self.path is not None:
            info = {**self.config, f"best_{self.metric}": self.value, "best_epoch": self.epoch, **extra}
            save_checkpoint({"model": self.state, "config": info}, self.path)


def train_classifier(
    network: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    settings: TrainSettings | None = None,
    loss_function: nn.Module | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    train_handlers: Sequence[Any] = (),
    progress: bool | None = None,
    resume_dir: str | os.PathLike[str] | None = None,
    resume: bool | str = False,
) -> TrainedClassifier:
    """Train ``network``, validating on ``val_loader``; keep (and return) the best validation weights.

    Args:
        network: any classifier: ``(B, C_in, *spatial) -> (B, classes)`` logits, or a list / tuple of exit logits.
        train_loader: training batches ``{"image", "label"}`` (a ``DataLoader`` when ``class_balanced``).
        val_loader: **validation** batches (never the test split): checkpoint selection.
        settings: optimiser, schedule, selection, sampling and seed. Defaults to ``TrainSettings()``.
        loss_function: ``loss(pred, label)``, e.g. :class:`~medood.losses.classification.MultiExitLoss`. Defaults to
            ``nn.CrossEntropyLoss()``.
        checkpoint_path: where the selected weights are written (atomically, at every improvement and at the
            end) as ``{"model": state_dict, "config": {**config, "best_<metric>", "best_epoch", "train_seconds"}}``.
            Defaults to ``None`` (nothing written).
        config: plain values stored with the weights (architecture, classes, preprocessing, ...).
        device: where to train. Defaults to ``"cpu"``.
        train_handlers: extra Ignite handlers attached to the trainer (objects with ``attach(engine)``).
        progress: show a progress bar; ``None`` = on unless ``CI=true`` or ``MEDOOD_PROGRESS=0``.
        resume_dir: keep the last state of the run there at every epoch end (network, optimizer, schedule, the
            best weights so far and the trainer: :class:`~medood.engines.TrainingCheckpoint`). Defaults to None.
        resume: continue from the last state in ``resume_dir`` (from its iteration); read by
            :func:`~medood.utils.as_flag`. Defaults to False.
    """
    from ignite.engine import Events
    from monai.utils import set_determinism

    resume = as_flag(resume, "resume")
    s = settings or TrainSettings()
    if s.seed is not None:
        set_determinism(seed=s.seed)
    loss = loss_function if loss_function is not None else nn.CrossEntropyLoss()
    network.to(device)
    if s.class_balanced:
        train_loader = class_balanced_loader(train_loader)  # type: ignore[arg-type]
    trainer, evaluator = classifier_engines(network, train_loader, val_loader, s, loss, device)
    ProgressBar("loss", enabled=progress).attach(trainer)
    for handler in train_handlers:
        handler.attach(trainer)
    keeper = _KeepBest(network, trainer, s.metric, s.select == "loss", checkpoint_path, config)
    evaluator.add_event_handler(Events.COMPLETED, keeper)
    if resume and resume_dir is None:
        raise ValueError("resume=True needs the resume_dir of the interrupted run")
    if resume_dir is not None:
        objects: dict[str, Any] = {"model": network, "optimizer": trainer.optimizer, "best": keeper}
        if trainer.lr_scheduler is not None:
            objects["lr_scheduler"] = trainer.lr_scheduler
        TrainingCheckpoint(resume_dir, "classifier_last", objects, resume=resume).attach(trainer)
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    if keeper.state is None:  # no validation ran (val_interval > epochs): keep the last weights
        keeper.state = _cpu_state(network)
    network.load_state_dict(keeper.state)
    keeper.save(train_seconds=seconds)
    saved = f"; saved {checkpoint_path}" if checkpoint_path is not None else ""
    logger.info("best %s %.4f at epoch %d%s", s.metric, keeper.value, keeper.epoch, saved)
    return TrainedClassifier(network.eval(), keeper.epoch, keeper.value, s.metric, keeper.history, seconds)


def load_classifier(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a classifier saved by :func:`train_folder_classifier`; returns ``(network in eval mode, config)``.

    Raises:
        DataError: the file is missing or is not a medood classifier checkpoint.
    """
    ckpt = load_checkpoint(path, hint="train one with `medood posthoc train`")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise DataError(path, "is not a `medood posthoc train` checkpoint", "expected the keys 'model' and 'config'")
    cfg = dict(ckpt["config"])
    missing = [k for k in ("arch", "class_names") if k not in cfg]
    if missing:
        raise DataError(path, f"has no {missing} in its config", "train it with `medood posthoc train`")
    net = build_classifier(cfg["arch"], len(cfg["class_names"]), cfg.get("in_channels", 3), cfg.get("spatial_dims", 2))
    net.load_state_dict(ckpt["model"])
    return net.to(device).eval(), cfg


def train_folder_classifier(
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

    A :func:`~medood.networks.classifiers.build_classifier` network trained by :func:`train_classifier` (Adam
    with cosine decay to 1e-5, cross-entropy, augmentation of
    :func:`~medood.data.classification.classifier_preprocessing`); the best validation accuracy is saved to
    ``out_dir/model.pt`` as ``{"model": state_dict, "config": {...}}``. Seeded before the loaders and the
    network are built.

    Returns:
        The config saved with the weights, including ``best_val_accuracy``, ``best_epoch`` and ``train_seconds``.

    Raises:
        DataError: missing split or class folders (validation classes must match the training classes).
    """
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    loader_args = (batch_size, normalize, num_workers)
    train_loader, names = class_folder_loader(data_root, "train", image_size, None, True, *loader_args)
    val_loader, _ = class_folder_loader(data_root, "val", image_size, names, False, *loader_args)
    net = build_classifier(arch, len(names)).to(device)
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
    settings = TrainSettings(epochs=epochs, lr=lr, val_interval=val_interval)
    path = Path(out_dir) / "model.pt"
    result = train_classifier(net, train_loader, val_loader, settings, None, path, config, device, (), progress)
    return {
        **config,
        "best_val_accuracy": result.best_value,
        "best_epoch": result.best_epoch,
        "train_seconds": result.seconds,
    }
