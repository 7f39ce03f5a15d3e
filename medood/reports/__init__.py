"""Pictures and scenes of a bundle run, built from its OUTPUT FOLDER only (never the writer's internals).

- :mod:`medood.reports.run_dir`: read a run folder (scores, slice scores, maps, masks, metrics, thresholds);
- :func:`write_report`: ``report.html``, self-contained (``medood report RUN_DIR``);
- :func:`write_slicer_scene`: ``open_in_slicer.py`` for 3D Slicer (``medood slicer-scene RUN_DIR``);
- :func:`worst_slices_montage`: ``worst_slices.png``;
- :class:`RunReportHandler`: an Ignite handler writing the report and the scene when inference completes.

Layer: above ``handlers`` / ``metrics`` (it reads what they write), below ``cli``.
"""

from __future__ import annotations

from medood.reports.handler import RunReportHandler
from medood.reports.html import write_report
from medood.reports.montage import worst_slices_montage
from medood.reports.run_dir import (
    THRESHOLDS_FILE,
    RunOutputs,
    display_window,
    read_run,
    read_thresholds,
    thresholds_record,
    write_thresholds,
)
from medood.reports.slicer import write_slicer_scene

__all__ = [
    "THRESHOLDS_FILE",
    "RunOutputs",
    "RunReportHandler",
    "display_window",
    "read_run",
    "read_thresholds",
    "thresholds_record",
    "worst_slices_montage",
    "write_report",
    "write_slicer_scene",
    "write_thresholds",
]
