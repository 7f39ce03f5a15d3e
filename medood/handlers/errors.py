"""Make skipped cases visible: ``errors.csv`` and a failed run.

:class:`FailedCasesWriter` is an Ignite handler for a run whose loader skips bad cases
(:class:`medood.data.SkippingDataLoader`). When the run completes it

1. writes ``<output_dir>/errors.csv`` (``case,file,error``; one row per skipped case; header only when none
   failed, so a stale file from an earlier run never survives), atomically;
2. then, if any case failed, raises :class:`FailedCasesError` naming the count and the CSV. The exception
   reaches ``engine.run()`` through Ignite's ``EXCEPTION_RAISED`` event (MONAI's ``StatsHandler`` logs it), so
   ``python -m monai.bundle run`` exits with a non-zero status while every good case's outputs are written.

The raise is registered on ``COMPLETED`` when the run starts, i.e. after every handler attached before the run
(such as :class:`~medood.handlers.OODResultWriter`, whose ``scores.csv`` is written on ``COMPLETED`` too), so
it always comes last. Pass ``raise_on_failure=False`` to only write the CSV.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medood.data.skipping import CaseFailure
from medood.utils.errors import printable_path
from medood.utils.io import atomic_write

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["FailedCasesError", "FailedCasesWriter", "write_errors_csv"]

logger = logging.getLogger(__name__)

_COLUMNS = ("case", "file", "error")


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
        first = failures[0]
        super().__init__(
            f"{len(failures)}{of} cases failed and were skipped (listed in {csv_path}); "
            f"first: {first.case}: {first.error}"
        )


def write_errors_csv(path: str | os.PathLike[str], failures: Iterable[CaseFailure]) -> Path:
    """Atomically write ``errors.csv`` with columns ``case,file,error`` (header only when ``failures`` is empty)."""
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(_COLUMNS)
        for fail in failures:
            w.writerow([printable_path(fail.case), printable_path(fail.file), fail.error])
    return Path(path)


class FailedCasesWriter:
    """Write ``errors.csv`` at the end of a run and fail the run when a case was skipped (module docstring).

    Args:
        output_dir: folder of ``errors.csv`` (created).
        source: the object whose ``failures`` list holds the skipped cases, usually the run's
            :class:`~medood.data.SkippingDataLoader`. Defaults to ``None``: the engine's own data loader.
        filename: name of the CSV. Defaults to ``"errors.csv"``.
        raise_on_failure: raise :class:`FailedCasesError` after writing when any case failed. Defaults to True.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        source: Any = None,
        filename: str = "errors.csv",
        raise_on_failure: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.source, self.filename, self.raise_on_failure = source, filename, raise_on_failure

    @property
    def csv_path(self) -> Path:
        """Where ``errors.csv`` goes."""
        return self.output_dir / self.filename

    def attach(self, engine: Engine) -> None:
        """Attach to an Ignite engine."""
        from ignite.engine import Events

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
        found = getattr(source, "failures", None)
        if found is None:
            logger.warning("FailedCasesWriter: %r records no failures; use medood.data.SkippingDataLoader", source)
            return []
        return list(found)

    def completed(self, engine: Engine) -> None:
        """Write the CSV, then raise :class:`FailedCasesError` if a case failed (and ``raise_on_failure``)."""
        failures = self.failures(engine)
        write_errors_csv(self.csv_path, failures)
        if not failures:
            logger.info("no case failed; wrote an empty %s", self.csv_path)
            return
        logger.error("%d cases failed and were skipped; see %s", len(failures), self.csv_path)
        if self.raise_on_failure:
            dataset = getattr(self._source(engine), "dataset", None)
            total = len(dataset) if isinstance(dataset, Sized) else None
            raise FailedCasesError(failures, self.csv_path, total)
