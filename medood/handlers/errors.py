"""Make skipped cases visible: ``errors.csv`` and a failed run. The one skip-and-record mechanism of every bundle.

:class:`FailedCasesWriter` is an Ignite handler. Attached to an engine, it makes the engine's data loader skip bad
cases (:func:`medood.data.skipping.skipping_loader`: any ``DataLoader`` becomes a
:class:`~medood.data.SkippingDataLoader` over the same items, batches and order), so adding it to a workflow's
handlers is all a bundle config needs::

    - {_target_: medood.handlers.FailedCasesWriter, output_dir: '@output_dir'}

When the run completes it

1. writes ``<output_dir>/errors.csv`` (``case,file,stage,reason``; one row per skipped case; header only when
   none failed, so a stale file from an earlier run never survives), atomically;
2. logs one line per failed case, then, if any case failed, raises :class:`FailedCasesError`, whose message is
   one short line (the count and the CSV's path). The exception reaches ``engine.run()`` through Ignite's
   ``EXCEPTION_RAISED`` event, so ``python -m monai.bundle run`` exits with status 1 while every good case's
   outputs (``scores.csv`` ...) are written; the ``medood`` CLI prints the lines without a traceback
   (``--debug`` or ``MEDOOD_DEBUG=1`` shows it).

The raise is registered on ``COMPLETED`` when the run starts, i.e. after every handler attached before the run
(such as :class:`~medood.handlers.OODResultWriter`, whose ``scores.csv`` is written on ``COMPLETED`` too), so
it always comes last. Pass ``raise_on_failure=False`` to only write the CSV.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from collections.abc import Iterable, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medood.data.shard import case_order, datalist_of, merge_rows
from medood.data.skipping import CaseFailure, data_error_in, skipping_loader
from medood.utils.distributed import get_rank
from medood.utils.errors import printable_path
from medood.utils.io import atomic_write

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "FailedCasesError",
    "FailedCasesWriter",
    "debug_requested",
    "failed_cases_in",
    "failure_lines",
    "print_failed_cases_concisely",
    "write_errors_csv",
]

logger = logging.getLogger(__name__)

_COLUMNS = ("case", "file", "stage", "reason")


class FailedCasesError(RuntimeError):
    """Raised at the end of a run in which some cases could not be processed.

    Args:
        failures: the failed cases.
        csv_path: where they are listed.
        total: number of cases attempted, if known.
    """

    def __init__(self, failures: list[CaseFailure], csv_path: Path, total: int | None = None) -> None:
        self.failures = failures
        self.csv_path = csv_path
        of = f" of {total}" if total is not None else ""
        super().__init__(f"{len(failures)}{of} cases failed and were skipped; see {printable_path(csv_path)}")

    def lines(self) -> list[str]:
        """One line per failed case, then the path of ``errors.csv``: what a user needs, without a traceback."""
        return [*failure_lines(self.failures), str(self)]


def failed_cases_in(exc: BaseException | None) -> FailedCasesError | None:
    """The :class:`FailedCasesError` in ``exc``'s chain (MONAI wraps it in ``RuntimeError``), or ``None``."""
    found = data_error_in(exc, (FailedCasesError,)) if exc is not None else None
    return found if isinstance(found, FailedCasesError) else None


def debug_requested() -> bool:
    """``MEDOOD_DEBUG`` is set (to anything but ``0``): show tracebacks of failed batches."""
    return os.environ.get("MEDOOD_DEBUG", "") not in ("", "0")


def _concise_excepthook(previous: Any) -> Any:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        failed = failed_cases_in(exc)
        if failed is None or debug_requested():
            previous(exc_type, exc, tb)
            return
        sys.stderr.write("\n".join([*failed.lines(), "(MEDOOD_DEBUG=1 shows the traceback)"]) + "\n")

    hook.medood_failed_cases = True  # type: ignore[attr-defined]
    return hook


def print_failed_cases_concisely() -> None:
    """Make an uncaught :class:`FailedCasesError` print its lines, not a traceback (``MEDOOD_DEBUG=1`` keeps it).

    What ends ``python -m monai.bundle run`` when cases failed: the exit status stays 1. Other exceptions are
    printed by the previous hook, unchanged; installing twice is a no-op.
    """
    if not getattr(sys.excepthook, "medood_failed_cases", False):
        sys.excepthook = _concise_excepthook(sys.excepthook)


def failure_lines(failures: Iterable[CaseFailure]) -> list[str]:
    """``failed: <case>: <file>: <reason> [<stage>]``, one line per case."""
    return [f"failed: {f.case}: {printable_path(f.file)}: {f.error} [{f.stage}]" for f in failures]


def write_errors_csv(path: str | os.PathLike[str], failures: Iterable[CaseFailure]) -> Path:
    """Atomically write ``errors.csv`` with columns ``case,file,stage,reason`` (header only when none failed)."""
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(_COLUMNS)
        for fail in failures:
            w.writerow([printable_path(fail.case), printable_path(fail.file), fail.stage, fail.error])
    return Path(path)


class FailedCasesWriter:
    """Write ``errors.csv`` at the end of a run and fail the run when a case was skipped (module docstring).

    Args:
        output_dir: folder of ``errors.csv`` (created).
        source: the object whose ``failures`` list holds the skipped cases, usually the run's
            :class:`~medood.data.SkippingDataLoader`, or a list of them (e.g. the training and validation
            :class:`~medood.data.SafeCacheDataset` of a training run: call :meth:`completed` with ``None`` at the
            end of the run). Defaults to ``None``: the engine's own data loader.
        filename: name of the CSV. Defaults to ``"errors.csv"``.
        raise_on_failure: raise :class:`FailedCasesError` after writing when any case failed. Defaults to True.
        skip_bad_cases: make the engine's own data loader skip bad cases (when ``source`` is ``None``).
            Defaults to True.
        image_key: the datalist key of the input file, for the rows of a loader this handler wraps.
            Defaults to ``"image"``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        source: Any = None,
        filename: str = "errors.csv",
        raise_on_failure: bool = True,
        skip_bad_cases: bool = True,
        image_key: str = "image",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.source, self.filename, self.raise_on_failure = source, filename, raise_on_failure
        self.skip_bad_cases, self.image_key = skip_bad_cases, image_key

    @property
    def csv_path(self) -> Path:
        """Where ``errors.csv`` goes."""
        return self.output_dir / self.filename

    def attach(self, engine: Engine) -> None:
        """Attach to an Ignite engine; its data loader (MONAI workflows' ``data_loader``) now skips bad cases."""
        from ignite.engine import Events

        loader = getattr(engine, "data_loader", None)
        if self.source is None and self.skip_bad_cases and loader is not None:
            skipping = skipping_loader(loader, image_key=self.image_key)
            if skipping is not loader:
                engine.data_loader = skipping  # type: ignore[attr-defined]
                engine.state.epoch_length = None  # known at the end of the pass (failed cases are dropped)
        engine.add_event_handler(Events.STARTED, self._register_last)

    def _register_last(self, engine: Engine) -> None:
        from ignite.engine import Events

        if not engine.has_event_handler(self.completed, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def _source(self, engine: Engine | None) -> Any:
        if self.source is not None or engine is None:
            return self.source
        loader = getattr(engine, "data_loader", None)
        return loader if loader is not None else getattr(engine.state, "dataloader", None)

    def failures(self, engine: Engine | None = None) -> list[CaseFailure]:
        """The failures recorded by ``source`` (or the engine's data loader)."""
        source = self._source(engine)
        out: list[CaseFailure] = []
        for one in source if isinstance(source, (list, tuple)) else [source]:
            found = getattr(one, "failures", None)
            if found is None:
                logger.warning("FailedCasesWriter: %r records no failures; use medood.data.SkippingDataLoader", one)
                continue
            out.extend(found)
        return out

    def completed(self, engine: Engine) -> None:
        """Write the CSV, then raise :class:`FailedCasesError` if a case failed (and ``raise_on_failure``).

        In a sharded run every rank's failures are gathered and rank 0 writes them, in datalist order, into one
        ``errors.csv``; every rank raises when any case failed (the same exit status everywhere).
        """
        source = self._source(engine)
        failures = merge_rows(self.failures(engine), case_order(datalist_of(source) or []), lambda f: f.case, source)
        failures = list(dict.fromkeys(failures))  # a padded (training) sampler may repeat a failed case
        if get_rank() == 0:
            write_errors_csv(self.csv_path, failures)
        if not failures:
            if get_rank() == 0:
                logger.info("no case failed; wrote an empty %s", self.csv_path)
            return
        if get_rank() == 0:
            for line in failure_lines(failures):
                logger.error("%s", line)
            logger.error("%d cases failed and were skipped; see %s", len(failures), self.csv_path)
        if self.raise_on_failure:
            print_failed_cases_concisely()
            dataset = getattr(source, "dataset", None)
            total = len(dataset) if isinstance(dataset, Sized) else None
            raise FailedCasesError(failures, self.csv_path, total)
