"""An Ignite handler that writes ``report.html`` and ``open_in_slicer.py`` when an inference run completes."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medood.reports.html import write_report
from medood.reports.run_dir import read_run
from medood.reports.slicer import write_slicer_scene
from medood.utils.errors import DataError
from medood.utils.io import case_name

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["RunReportHandler"]

logger = logging.getLogger(__name__)


class RunReportHandler:
    """Write the run report (and the Slicer scene) from the output folder at ``Events.COMPLETED``.

    List it AFTER the result writer in the evaluator's ``val_handlers``: Ignite calls ``COMPLETED`` handlers in
    the order they were attached, and the report reads the CSVs and maps the writer has just written.

    Args:
        output_dir: the run's output folder (the writer's ``output_dir``).
        datalist: the run's datalist (``[{"image": path, mask_key: path?}]``): tells the report where each
            case's input and lesion mask are. Defaults to ``None`` (the ``image`` column of ``scores.csv``).
        mask_key: lesion-mask key of the datalist entries. Defaults to ``"label"``.
        slicer_scene: also write ``open_in_slicer.py``. Defaults to ``True``.
        raise_errors: re-raise a failure (otherwise it is logged: the run's outputs are already written).
            Defaults to ``False``.
        **report_kwargs: passed to :func:`~medood.reports.html.write_report` (``max_cases``, ...).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        datalist: Sequence[dict[str, Any]] | None = None,
        mask_key: str = "label",
        slicer_scene: bool = True,
        raise_errors: bool = False,
        **report_kwargs: Any,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.datalist = list(datalist or [])
        self.mask_key, self.slicer_scene, self.raise_errors = mask_key, slicer_scene, raise_errors
        self.report_kwargs = report_kwargs

    def attach(self, engine: Engine) -> None:
        """Attach to an Ignite engine."""
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> Path | None:
        """Write the report (and scene); returns the report's path, or ``None`` after a logged failure."""
        images = {case_name(c["image"]): c["image"] for c in self.datalist if isinstance(c.get("image"), str)}
        lesions = {
            case_name(c["image"]): c[self.mask_key]
            for c in self.datalist
            if isinstance(c.get("image"), str) and isinstance(c.get(self.mask_key), str)
        }
        try:
            run = read_run(self.output_dir, images=images)
            report = write_report(run, lesions=lesions, **self.report_kwargs)
            if self.slicer_scene and any(c.anomaly_map is not None for c in run.cases):
                write_slicer_scene(run)
        except (DataError, OSError, ValueError) as e:
            if self.raise_errors:
                raise
            logger.error("run report not written: %s", e)
            return None
        logger.info("wrote %s", report)
        return report
