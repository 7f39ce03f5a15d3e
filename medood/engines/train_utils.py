"""A one-call training loop on top of :class:`~medood.engines.StepTrainer` (for ``detector.fit``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from medood.engines.trainers import StepTrainer
from medood.handlers.progress import ProgressBar

__all__ = ["train_network"]

logger = logging.getLogger(__name__)


def train_network(
    network: nn.Module,
    loader: Iterable[Any],
    loss_function: Callable[..., Any],
    epochs: int,
    lr: float = 1e-3,
    device: torch.device | str = "cpu",
    weight_decay: float = 0.0,
    progress: bool | None = None,
    prepare_batch: Callable[..., Any] | None = None,
) -> StepTrainer:
    """Train ``network`` with Adam for ``epochs`` passes over ``loader`` and return the finished engine.

    Args:
        network: the module to train (moved to ``device``).
        loader: batches: tensors, ``{"image", ...}`` dicts or ``(image, label)`` tuples.
        loss_function: ``f(network, inputs, targets) -> (loss, outputs)`` (see :mod:`medood.losses`).
        epochs: passes over the loader.
        lr: learning rate. Defaults to 1e-3.
        device: where to train. Defaults to ``"cpu"``.
        weight_decay: Adam weight decay. Defaults to 0.
        progress: show an Ignite progress bar; ``None`` = on unless ``CI=true`` or ``MEDOOD_PROGRESS=0``.
        prepare_batch: MONAI ``prepare_batch`` callable (e.g. :class:`~medood.engines.prepare.PrepareKeys`).
    """
    network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    data = list(loader) if not hasattr(loader, "__len__") else loader
    trainer = StepTrainer(
        device=torch.device(device),
        max_epochs=epochs,
        train_data_loader=data,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,  # type: ignore[arg-type]
        **({"prepare_batch": prepare_batch} if prepare_batch is not None else {}),
    )
    ProgressBar("loss", enabled=progress).attach(trainer)
    trainer.run()
    logger.info(
        "trained %s for %d epochs; last loss %.4g",
        type(network).__name__,
        epochs,
        float(trainer.state.output["loss"].detach()),
    )
    return trainer
