"""Resume a bundle's training stage from its last checkpoint (model, optimizer, scheduler and trainer state)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ignite.handlers import Checkpoint

from medood.utils.checkpoints import load_checkpoint

__all__ = ["latest_checkpoint", "resume_training"]

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
    """Restore ``objects`` (model, optimizer, scheduler, trainer) from the latest ``<prefix>*.pt`` checkpoint.

    The trainer continues from the saved epoch when ``run()`` is called.
    """
    path = latest_checkpoint(ckpt_dir, prefix)
    Checkpoint.load_objects(to_load=objects, checkpoint=load_checkpoint(path))
    logger.info("resumed %s from %s (epoch %d)", prefix, path, trainer.state.epoch)
    return path
