"""The one owner of medood's outputs: the per-case result (:class:`OODResult`) and the run-folder format.

Every writer (result writer, guard, post-hoc scores, MONAI Label) and every reader (metrics, reports, Slicer scene)
goes through :mod:`medood.io.run_folder`; nothing else spells a file name, a suffix or a CSV layout.
"""

from medood.io.result import OODResult
from medood.io.run_folder import (
    ERRORS_CSV,
    METRICS_FILE,
    RUN_MANIFEST,
    SCORES_COLUMNS,
    SCORES_CSV,
    SLICE_SCORES_CSV,
    THRESHOLDS_FILE,
    RunFolder,
    RunFolderError,
    ScoreRow,
    escape_cell,
    map_file,
    map_suffix,
    overlay_file,
    read_manifest,
    read_score_rows,
    remove_stale_temporaries,
    seg_file,
    seg_files,
    unescape_cell,
    write_score_rows,
    write_slice_scores,
)

__all__ = [
    "ERRORS_CSV",
    "METRICS_FILE",
    "RUN_MANIFEST",
    "SCORES_COLUMNS",
    "SCORES_CSV",
    "SLICE_SCORES_CSV",
    "THRESHOLDS_FILE",
    "OODResult",
    "RunFolder",
    "RunFolderError",
    "ScoreRow",
    "escape_cell",
    "map_file",
    "map_suffix",
    "overlay_file",
    "read_manifest",
    "read_score_rows",
    "remove_stale_temporaries",
    "seg_file",
    "seg_files",
    "unescape_cell",
    "write_score_rows",
    "write_slice_scores",
]
