"""Resumable batch writers: the one mechanism by which every writer that owns a run folder continues a killed run.

A writer (:class:`~medood.handlers.OODResultWriter` for the map bundles, the post-hoc
:class:`~medood.handlers.posthoc_scores.PosthocScoreWriter`, the spectral bundle's
:class:`~medood.handlers.guard.GuardScoreWriter`) holds a :class:`ResumableRun`:

1. :meth:`ResumableRun.start` (at the engine's ``STARTED``): rank 0 takes the output folder
   (:meth:`medood.io.RunFolder.start`: stale temporaries removed, ``new`` / ``resume`` / ``overwrite``) and, in
   ``resume`` mode, asks the writer which cases are complete (their rows recorded in the last run's CSVs or in a
   progress journal, their files present and readable); every rank learns them (broadcast). The engine's loader is
   then replaced by one over the batches that hold another case (:func:`medood.data.shard.subset_loader`; whole
   batches, so that every case is computed in the batch an uninterrupted run puts it in): the network never sees a
   batch of complete cases again;
2. :meth:`ResumableRun.record` after each case's files are written: one ``fsync``-ed journal line
   (:meth:`medood.io.RunFolder.record`), so a ``kill -9`` at any point leaves a journal of complete cases only;
3. :meth:`ResumableRun.merge` at the end: the kept rows and every rank's new rows in datalist order (rank 0 gets
   them all), then the writer writes its files and :meth:`ResumableRun.finish` records ``run.json`` and drops the
   journals.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import nibabel as nib
import numpy as np

from medood.data.shard import case_order, datalist_of, merge_rows, sort_by_order, subset_loader
from medood.io.run_folder import RunFolder
from medood.utils.distributed import broadcast_object, get_rank

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ResumableRun", "outputs_valid"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def outputs_valid(folder: str | os.PathLike[str], files: Sequence[str]) -> bool:
    """Every file exists and is not empty, and the NIfTI ones read whole (a map cut short by a kill does not)."""
    for name in files:
        path = Path(folder) / name
        if not path.is_file() or path.stat().st_size == 0:
            return False
        if name.endswith((".nii.gz", ".nii")):
            try:
                np.asarray(nib.load(path).dataobj)  # type: ignore[attr-defined]
            except Exception:
                return False
    return True


def _length(loader: Any) -> int:
    try:
        return len(loader)
    except TypeError:  # a SkippingDataLoader has no length
        return 0


class ResumableRun:
    """A writer's run folder and the resume of an interrupted run (module docstring).

    Args:
        run: the writer's :class:`~medood.io.RunFolder` (its mode decides whether complete cases are kept).

    Attributes:
        kept: ``{case: journal record}`` of the complete cases of a resumed run (``{}`` otherwise); a case the run
            does again is dropped by :meth:`record`.
        items: the datalist of the engine's loader (before any subset), or ``None``.
        names: the case name of every datalist item (``None`` when unknown), or ``None``.
        order: ``{case name: datalist index}``: the order of the merged rows.
        started: whether :meth:`start` ran.
    """

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self.reset()

    def reset(self) -> None:
        """Forget the previous pass."""
        self.kept: dict[str, dict[str, Any]] = {}
        self.items: list[Any] | None = None
        self.names: list[str | None] | None = None
        self.order: dict[str, int] | None = None
        self.started = False
        self._loaders: list[Any] = []  # the engine's loader (whether the rows are sharded), when run by an engine

    def start(
        self,
        engine: Engine | None,
        complete: Callable[[], dict[str, dict[str, Any]]],
        names_of: Callable[[Sequence[Any]], list[str | None]],
    ) -> None:
        """Take the output folder (rank 0), learn the complete cases, give the engine the batches left to do.

        Args:
            engine: the engine whose ``data_loader`` is replaced when cases are kept (``None``: nothing replaced).
            complete: the writer's complete cases, ``{case: {"row", "slices", "files"}}`` (called on rank 0 after
                the folder is taken, in ``resume`` mode only).
            names_of: the case name the writer gives each datalist item (``None`` when unknown: its batch is redone).
        """
        self.reset()
        error, kept = None, {}
        if get_rank() == 0:
            try:
                self.run.start()
                kept = complete() if self.run.mode == "resume" else {}
            except Exception as e:
                error = e
        message, kept = broadcast_object((None if error is None else str(error), kept))
        if error is not None:
            raise error
        if message is not None:
            raise RuntimeError(f"rank 0 could not take the output folder: {message}")
        self.started, self.kept = True, kept
        loader = getattr(engine, "data_loader", None)
        self._loaders = [] if loader is None else [loader]
        self.items = datalist_of(loader)
        if self.items is None:
            return
        self.names = names_of(self.items)
        self.order = {n: i for i, n in reversed(list(enumerate(self.names))) if n is not None}
        for name, i in case_order(self.items).items():  # other spellings of a case, after the writer's own names
            self.order.setdefault(name, i)
        if kept and engine is not None and loader is not None:
            size = max(int(getattr(loader, "batch_size", 1) or 1), 1)  # whole batches: each case in its usual batch
            redo = {i // size for i, name in enumerate(self.names) if name not in kept}
            pending = [i for i in range(len(self.names)) if i // size in redo]
            if get_rank() == 0:
                logger.info("resume: %d complete case(s) kept in %s", len(kept), self.run.root)
            new = subset_loader(loader, pending)
            engine.data_loader = engine.state.dataloader = new  # type: ignore[attr-defined]
            self._loaders = [new]
            engine.state.epoch_length = _length(new) or None  # an empty loader still completes (the merge runs)

    def record(self, case: str, row: Any, slices: Sequence[Any] = (), files: Sequence[str] = ()) -> None:
        """Journal a finished case (after its files are written); a kept case done again loses its kept record."""
        self.kept.pop(case, None)
        if self.started:
            self.run.record(case, row, slices, files, get_rank())

    def merge(self, own: Sequence[T], kept: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """The ``kept`` rows (given by rank 0) and every rank's ``own`` rows, in datalist order (a collective)."""
        kept = list(kept) if get_rank() == 0 else []  # every rank knows them; rank 0 gives them
        merged = merge_rows(kept + list(own), self.order, key, *self._loaders)
        return sort_by_order(merged, self.order, key) if kept else merged

    def finish(self, cases: Sequence[str], status: str = "complete") -> None:
        """Record the run's cases in ``run.json`` and drop the journals (rank 0; nothing before :meth:`start`)."""
        if self.started:
            self.run.finish(cases, status)
