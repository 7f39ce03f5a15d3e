"""Run the training stages a detector declares, and calibrate a detector on healthy data.

A trained detector declares its stages as data (:class:`~medood.detectors.stages.TrainingStage`).
:class:`StageTrainer` turns one stage into an Ignite trainer (the declared network, loss and batch keys); the
bundles' stage configs build it with their own optimiser, schedule, validation and checkpoints, and
:func:`fit_detector` (the ``trainer`` callers hand to ``detector.fit``) builds it with Adam and the declared
defaults, one stage after the other, on the in-memory data each stage's own builder makes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from medood.detectors.base import OODDetector
from medood.detectors.heatmap import HeatmapDetector
from medood.detectors.stages import TrainingStage
from medood.engines.prepare import PrepareKeys
from medood.engines.trainers import StepEvaluator, StepTrainer
from medood.handlers.progress import ProgressBar
from medood.utils.batch import as_plain_tensor, unpack_batch
from medood.utils.enums import OODKeys

__all__ = ["StageEvaluator", "StageTrainer", "fit_detector", "stage_batches", "train_heatmap_decoder"]

logger = logging.getLogger(__name__)


class StageTrainer(StepTrainer):
    """:class:`~medood.engines.StepTrainer` for one declared stage of a detector.

    The network, the loss and ``prepare_batch`` come from the stage declaration; everything else (device, epochs,
    data loader, optimizer, handlers, AMP) is ``SupervisedTrainer``'s.

    Args:
        detector: the detector that declares the stage.
        stage: the stage name (``detector.training_stages()``).
        *args: as ``SupervisedTrainer``.
        loss_kwargs: overrides of the declared loss arguments (e.g. corruption ratios set in a bundle config).
        **kwargs: as ``SupervisedTrainer`` (``network``, ``loss_function`` and ``prepare_batch`` default to the
            declared ones).
    """

    def __init__(
        self, detector: OODDetector, stage: str, *args: Any, loss_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        spec = detector.stage(stage)
        kwargs.setdefault("network", detector.stage_network(stage))
        kwargs.setdefault("loss_function", spec.make_loss(**dict(loss_kwargs or {})))
        kwargs.setdefault("prepare_batch", PrepareKeys(spec.input_key, spec.target_key))
        super().__init__(*args, **kwargs)
        self.stage = spec


class StageEvaluator(StepEvaluator):
    """Validation counterpart of :class:`StageTrainer`: the declared loss (e.g. with a fixed validation seed).

    Args:
        detector: the detector that declares the stage.
        stage: the stage name.
        *args: as ``SupervisedEvaluator``.
        loss_kwargs: overrides of the declared loss arguments (``{"seed": 12345}`` for repeatable corruptions).
        **kwargs: as :class:`~medood.engines.StepEvaluator` (``network``, ``loss_function`` and ``prepare_batch``
            default to the declared ones).
    """

    def __init__(
        self, detector: OODDetector, stage: str, *args: Any, loss_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        spec = detector.stage(stage)
        kwargs.setdefault("network", detector.stage_network(stage))
        kwargs.setdefault("prepare_batch", PrepareKeys(spec.input_key, spec.target_key))
        kwargs.setdefault("loss_function", spec.make_loss(**dict(loss_kwargs or {})))
        super().__init__(*args, **kwargs)
        self.stage = spec


def _image_batches(loader: Iterable[Any]) -> list[dict[str, Tensor]]:
    out = []
    for batch in loader:
        x, y = unpack_batch(batch)
        item = {OODKeys.IMAGE.value: as_plain_tensor(x).float()}
        if y is not None:
            item[OODKeys.LABEL.value] = as_plain_tensor(y)
        out.append(item)
    if not out:
        raise ValueError("fit got an empty loader: no in-distribution data to train on")
    return out


def stage_batches(
    detector: Any,
    stage: TrainingStage,
    images: Sequence[Mapping[str, Tensor]],
    batch_size: int,
    device: torch.device,
    **options: Any,
) -> list[dict[str, Tensor]]:
    """The in-memory training batches of ``stage``: its own data builder (``stage.build_data``) on ``images``.

    ``options`` are the builder's extra arguments (e.g. the heatmap decoder's ``aux_images``).
    """
    return stage.build_data(detector, stage, images, batch_size, device, **options)


def _epochs_of(spec: TrainingStage, epochs: int | Mapping[str, int] | None) -> int:
    if epochs is None:
        return spec.epochs
    return int(epochs.get(spec.name, spec.epochs)) if isinstance(epochs, Mapping) else int(epochs)


def fit_detector(
    detector: OODDetector,
    loader: Iterable[Any],
    stages: Sequence[str] | None = None,
    epochs: int | Mapping[str, int] | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    stage_options: Mapping[str, Any] | None = None,
) -> OODDetector:
    """Train the declared stages of ``detector`` in order on the in-distribution batches of ``loader``.

    The images are held in memory: this is for small data, tests and notebooks; the bundles' stage configs train
    on real data (streaming, validation, checkpoints, resume).

    Args:
        detector: a detector with :meth:`~medood.detectors.base.OODDetector.training_stages`.
        loader: batches (tensors, ``{"image", "label"}`` dicts or ``(image, label)`` tuples).
        stages: train only these stages (default: all).
        epochs: epochs for every stage, or per stage name (default: the declared ones).
        lr: Adam learning rate (default: the declared one).
        batch_size: batch size of slice / token data (default: the declared one).
        device: where to train (default: the detector's device).
        progress: Ignite progress bar; ``None`` = on unless ``CI=true`` or ``MEDOOD_PROGRESS=0``.
        stage_options: extra arguments of the stage data builder (:func:`stage_batches`), e.g. the heatmap
            decoder's ``aux_images``.

    Returns:
        ``detector`` with trained networks (in eval mode; statistics and the fitted flag are ``fit``'s business).
    """
    dev = torch.device(device) if device is not None else detector.device
    detector.to(dev)
    images = _image_batches(loader)
    for spec in detector.training_stages():
        if stages is not None and spec.name not in stages:
            continue
        data = stage_batches(detector, spec, images, batch_size or spec.batch_size, dev, **dict(stage_options or {}))
        network = detector.stage_network(spec.name)
        optimizer = torch.optim.Adam(network.parameters(), lr=lr or spec.lr, **dict(spec.optimizer_kwargs))
        trainer = StageTrainer(
            detector, spec.name, device=dev, max_epochs=_epochs_of(spec, epochs), train_data_loader=data,
            optimizer=optimizer,
        )  # fmt: skip
        ProgressBar("loss", enabled=progress).attach(trainer)
        trainer.run()
        network.eval()
        last = float(trainer.state.output["loss"].detach())
        logger.info("stage %s: %d epochs, last loss %.4g", spec.name, trainer.state.max_epochs, last)
    return detector.eval()


def train_heatmap_decoder(
    detector: HeatmapDetector,
    id_loader: Iterable[Any],
    aux_loader: Iterable[Any] | None = None,
    **train_options: Any,
) -> HeatmapDetector:
    """Fit the feature range and train the decoder on in-memory images; mark the detector fitted.

    The training images are the ID images, their corruptions and extra auxiliary OOD images (e.g. another organ's
    training set).

    Args:
        detector: the heatmap detector.
        id_loader: ID training batches (re-iterable).
        aux_loader: batches of extra auxiliary OOD images (never an evaluation OOD set). Defaults to none.
        **train_options: as :func:`~medood.engines.fit.fit_detector` (``epochs``, ``lr``, ``device``, ...).
    """
    aux = None
    if aux_loader is not None:
        aux = torch.cat([as_plain_tensor(unpack_batch(b)[0]).float().cpu() for b in aux_loader])
    detector.fit_statistics(id_loader)
    detector.train_stages(id_loader, fit_detector, stage_options={"aux_images": aux}, **train_options)
    return detector.mark_fitted()  # type: ignore[return-value]
