"""Resumable training: the last checkpoint of a run (model, optimizer, scheduler, AMP scaler and trainer state).

:class:`TrainingCheckpoint` is the one implementation every bundle's training stage uses, whatever its trainer
(``SupervisedTrainer``, :class:`~medood.engines.StageTrainer`, the multi-task trainer): an Ignite ``Checkpoint``
of the trainer and the objects that define the run, written every ``every_iterations`` iterations and at every
epoch end (one file kept, written on rank 0 only by ignite's ``DiskSaver``). With ``resume=True`` it first loads
the newest ``<prefix>*.pt`` of ``save_dir`` into those objects: ``trainer.run()`` then continues from the saved
iteration (the rest of an interrupted epoch, then the remaining epochs). In a bundle::

    resume: false                  # --resume true on the command line
    train#checkpoint: {_target_: medood.engines.TrainingCheckpoint, save_dir: '@ckpt_dir', prefix: train_last,
                       objects: {model: '@network', optimizer: '@optimizer', lr_scheduler: '@lr_scheduler'},
                       resume: '@resume'}
    initialize: [..., '$@train#checkpoint.attach(@train#trainer)']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.handlers import Checkpoint, DiskSaver

from medood.utils.checkpoints import load_checkpoint
from medood.utils.config import as_flag
from medood.utils.distributed import get_rank

__all__ = ["TrainingCheckpoint", "latest_checkpoint", "resume_training"]

logger = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: str | os.PathLike[str], prefix: str) -> Path:
    """The most recently written ``<prefix>*.pt`` in ``ckpt_dir``.

    Raises:
        FileNotFoundError: none exists.
    """
    files = sorted(Path(ckpt_dir).glob(f"{prefix}*.pt"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no checkpoint {prefix}*.pt in {ckpt_dir} to resume from")
    return files[-1]


def resume_training(trainer: Any, ckpt_dir: str | os.PathLike[str], prefix: str, objects: dict[str, Any]) -> Path:
    """Restore ``objects`` (model, optimizer, scheduler, trainer, ...) from the latest ``<prefix>*.pt`` checkpoint.

    The trainer continues from the saved iteration when ``run()`` is called.
    """
    path = latest_checkpoint(ckpt_dir, prefix)
    ckpt = load_checkpoint(path)
    state = getattr(trainer, "state", None)
    max_epochs = getattr(state, "max_epochs", None)
    Checkpoint.load_objects(to_load={k: v for k, v in objects.items() if k in ckpt}, checkpoint=ckpt)
    if max_epochs is not None:  # the configured number of epochs, not the interrupted run's (e.g. --epochs 60)
        trainer.state.max_epochs = max_epochs
        if trainer.state.epoch >= max_epochs:
            logger.warning("%s: the checkpoint already finished epoch %d of %d", path, trainer.state.epoch, max_epochs)
    logger.info("resumed %s from %s (epoch %s, iteration %s)", prefix, path, getattr(state, "epoch", "?"),
                getattr(state, "iteration", "?"))  # fmt: skip
    return path


class TrainingCheckpoint:
    """The last checkpoint of a training run, and resuming from it.

    Args:
        save_dir: folder of the checkpoint.
        prefix: file name prefix (``<prefix>_checkpoint_<iteration>.pt``); one file is kept.
        objects: what defines the run besides the trainer: ``{"model": ..., "optimizer": ..., "lr_scheduler":
            ...}`` (objects with ``state_dict`` / ``load_state_dict``). The trainer and, when it has one, its AMP
            ``GradScaler`` are added by :meth:`attach`.
        resume: load the newest checkpoint before training (``FileNotFoundError`` if there is none); read by
            :func:`~medood.utils.as_flag` (``--resume false`` from the command line is False). Defaults to False.
        every_iterations: also save every this many iterations (``None``: at epoch ends only). Defaults to None.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        prefix: str,
        objects: Mapping[str, Any],
        resume: bool | str = False,
        every_iterations: int | None = None,
    ) -> None:
        if every_iterations is not None and every_iterations < 1:
            raise ValueError(f"every_iterations must be >= 1, got {every_iterations}")
        self.save_dir, self.prefix, self.objects = Path(save_dir), prefix, dict(objects)
        self.resume, self.every_iterations = as_flag(resume, "resume"), every_iterations
        self.resumed_from: Path | None = None

    def attach(self, trainer: Any) -> None:
        """Resume ``trainer`` if asked, then save its state at every epoch end (and every ``every_iterations``)."""
        from ignite.engine import Events

        objects = {**self.objects, "trainer": trainer}
        scaler = getattr(trainer, "scaler", None)
        if scaler is not None:
            objects["scaler"] = scaler
        if self.resume:
            self.resumed_from = resume_training(trainer, self.save_dir, self.prefix, objects)
        saver = DiskSaver(str(self.save_dir), require_empty=False, atomic=True, create_dir=True)
        checkpoint = Checkpoint(
            objects, saver, filename_prefix=self.prefix, n_saved=1,
            global_step_transform=lambda engine, _event: engine.state.iteration,
        )  # fmt: skip
        event: Any = Events.EPOCH_COMPLETED
        if self.every_iterations is not None:
            event = event | Events.ITERATION_COMPLETED(every=self.every_iterations)
        trainer.add_event_handler(event, checkpoint)
        trainer.add_event_handler(event, self._drop_stale, checkpoint)

    def _drop_stale(self, _engine: Any, checkpoint: Checkpoint) -> None:
        """Remove the older ``<prefix>*.pt`` (a resumed run's starting file) once a newer one is written (rank 0)."""
        last = checkpoint.last_checkpoint
        if last is None or get_rank() != 0:
            return
        for path in self.save_dir.glob(f"{self.prefix}*.pt"):
            if path.name != Path(str(last)).name:
                path.unlink(missing_ok=True)
