"""Read a bundle run's OUTPUT FOLDER: what the reports, the Slicer scene and the MONAI Label app build on.

A run folder (the ``output_dir`` of any bundle's inference) may hold:

The format is :mod:`medood.io.run_folder`'s (names, suffixes, CSV layouts, ``run.json``); this module parses a folder
for the reports. When the folder has a ``run.json``, only that run's cases are read, with its map kind.

* ``scores.csv``: ``case,score,flagged[,label][,image]`` (``image`` = the input file, optional);
* ``slice_scores.csv``: ``case,axis,slice,score`` (long format);
* per case ``<case>_anomaly_map.nii.gz`` (float32 map on the input grid), ``<case>_anomaly_seg.nii.gz`` or
  ``<case>_anomaly_seg.seg.nrrd`` (mask), ``<case>_anomaly_overlay.png`` (2D inputs);
* ``metrics.json`` (written when labels exist);
* ``thresholds.json`` (:data:`THRESHOLDS_FILE`): the healthy-calibration numbers every picture uses::

      {"map_threshold": 0.53,            # mask threshold (healthy map-value percentile), or null
       "score_threshold": 0.80,          # image-score threshold of the "flagged" column, or null
       "window": [0.53, 2.12],           # map values shown transparent / full colour, or null
       "map_percentile": 99.5, "score_percentile": 95.0,
       "id_scores": [0.71, 0.72, ...]}   # healthy calibration image scores (or their quantiles), or null

  Every key is optional. Without ``window`` the colour window is :func:`display_window` of the map threshold.

:func:`~medood.handlers.writers.thresholds_record` and :func:`~medood.handlers.writers.write_thresholds` make and
write ``thresholds.json`` (the one place its format is defined; the result writer calls them); every reader
raises :class:`~medood.utils.errors.DataError` naming the bad file.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medood.detectors.calibration import overlay_window
from medood.handlers.writers import thresholds_record
from medood.io import run_folder as rf
from medood.io.run_folder import THRESHOLDS_FILE, read_thresholds, write_thresholds
from medood.utils.errors import DataError
from medood.utils.io import read_json_object

__all__ = [
    "MAP_SUFFIX",
    "SEG_SUFFIXES",
    "THRESHOLDS_FILE",
    "CaseOutputs",
    "RunOutputs",
    "display_window",
    "read_run",
    "read_thresholds",
    "thresholds_record",
    "write_thresholds",
]

MAP_SUFFIX = rf.map_suffix()
#: Mask file suffixes, in order of preference (a ``.seg.nrrd`` carries its segment name).
SEG_SUFFIXES = tuple(name[1:] for name in rf.seg_files("", "anomaly"))
_IMAGE_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def display_window(map_threshold: float | None, window: Sequence[float] | None = None) -> tuple[float, float] | None:
    """The fixed colour window of every map picture: ``window`` if recorded, else the calibration's default.

    The default is :func:`~medood.detectors.calibration.overlay_window` of the map threshold (maps are never
    min-max scaled per image); ``None`` when the run has neither a window nor a calibrated threshold.
    """
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        return (lo, hi) if hi > lo else (lo, lo + 1.0)
    return None if map_threshold is None else overlay_window(float(map_threshold))


@dataclass
class CaseOutputs:
    """What a run folder holds for one case (paths are ``None`` when the file is absent)."""

    name: str
    score: float | None = None
    label: int | None = None
    flagged: int | None = None
    image: Path | None = None
    anomaly_map: Path | None = None
    mask: Path | None = None
    overlay: Path | None = None
    slice_scores: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class RunOutputs:
    """A parsed run folder: cases in ``scores.csv`` order, thresholds, metrics."""

    root: Path
    cases: list[CaseOutputs]
    thresholds: dict[str, Any]
    metrics: dict[str, Any] | None
    manifest: dict[str, Any] | None = None
    results: dict[str, Any] | None = None

    @property
    def map_kind(self) -> str:
        """The map kind of the run's file names (``anomaly``, ``cam``, ``heatmap`` ...; from ``run.json``)."""
        return str((self.manifest or {}).get("map_kind") or "anomaly")

    @property
    def n_calibration(self) -> int | None:
        """The number of healthy calibration images (``thresholds.json``), if recorded."""
        n = self.thresholds.get("n_calibration")
        return None if n is None else int(n)

    @property
    def map_threshold(self) -> float | None:
        """The healthy mask threshold, if recorded."""
        return _opt_float(self.thresholds.get("map_threshold"))

    @property
    def score_threshold(self) -> float | None:
        """The healthy image-score threshold, if recorded."""
        return _opt_float(self.thresholds.get("score_threshold"))

    @property
    def window(self) -> tuple[float, float] | None:
        """The fixed colour window of the maps (:func:`display_window`)."""
        return display_window(self.map_threshold, self.thresholds.get("window"))

    @property
    def id_scores(self) -> list[float]:
        """The in-distribution reference scores: healthy calibration scores, else the run's label-0 cases."""
        ref = self.thresholds.get("id_scores")
        if ref:
            return [float(v) for v in ref]
        return [c.score for c in self.cases if c.label == 0 and c.score is not None]


def _opt_float(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"cannot be read as CSV ({e})") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(path, f"has no {missing} column(s)", hint=f"expected a header with {', '.join(required)}")
    return rows


def _num(path: Path, row: Mapping[str, str], key: str, cast: type = float) -> Any:
    raw = (row.get(key) or "").strip()
    if not raw:
        return None
    try:
        return cast(float(raw)) if cast is int else cast(raw)
    except ValueError:
        raise DataError(path, f"{key} {raw!r} of case {row.get('case')!r} is not a number") from None


def _find_image(images_dir: Path | None, name: str) -> Path | None:
    if images_dir is None:
        return None
    for ext in _IMAGE_EXTS:
        hits = sorted(images_dir.rglob(f"{name}{ext}"))
        if hits:
            return hits[0]
    return None


def _case_files(root: Path, case: CaseOutputs, kind: str) -> None:
    amap = root / rf.map_file(case.name, kind)
    case.anomaly_map = amap if amap.is_file() else None
    case.mask = next((root / n for n in rf.seg_files(case.name, kind) if (root / n).is_file()), None)
    overlay = root / rf.overlay_file(case.name, kind)
    case.overlay = overlay if overlay.is_file() else None


def read_run(
    run_dir: str | os.PathLike[str],
    images: Mapping[str, str | os.PathLike[str]] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
) -> RunOutputs:
    """Parse a run folder (see the module docstring).

    Args:
        run_dir: the bundle's output folder.
        images: ``{case: input path}``; overrides the ``image`` column of ``scores.csv``.
        images_dir: folder searched (recursively) for ``<case>.<ext>`` when a case's input is not known otherwise.

    Returns:
        The cases (``scores.csv`` order, then maps without a score row), thresholds and metrics.

    Raises:
        DataError: the folder is missing or holds neither ``scores.csv`` nor any anomaly map, or a file is bad.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(root, "is not a folder", hint="give the output_dir of a bundle run")
    manifest = rf.read_manifest(root)
    kind = str((manifest or {}).get("map_kind") or "anomaly")
    scores_csv = root / rf.SCORES_CSV
    rows = rf.read_score_rows(scores_csv, require_flagged=False) if scores_csv.is_file() else []
    cases: dict[str, CaseOutputs] = {}
    for row in rows:
        image = Path(row.image) if row.image else None
        cases[row.case] = CaseOutputs(row.case, score=row.score, label=row.label, flagged=row.flagged, image=image)
    if manifest is not None:  # only the cases of the run that owns the folder
        own = set(manifest.get("cases") or [])
        cases = {k: v for k, v in cases.items() if k in own} if own else cases
    else:
        suffix = rf.map_suffix(kind)
        for amap in sorted(root.glob(f"*{suffix}")):
            name = amap.name[: -len(suffix)]
            cases.setdefault(name, CaseOutputs(name))
    if not cases:
        raise DataError(root, f"holds neither scores.csv nor any *{rf.map_suffix(kind)}", hint="is this a run folder?")
    _read_slice_scores(root / rf.SLICE_SCORES_CSV, cases)
    search = Path(images_dir) if images_dir is not None else None
    for case in cases.values():
        _case_files(root, case, kind)
        if images and case.name in images:
            case.image = Path(images[case.name])
        if case.image is None or not case.image.is_file():
            case.image = _find_image(search, case.name) or (case.image if case.image and case.image.is_file() else None)
    metrics = _read_json(root / rf.METRICS_FILE)
    results = _read_json(root / rf.RESULTS_FILE)
    return RunOutputs(root, list(cases.values()), read_thresholds(root), metrics, manifest, results)


def _read_slice_scores(path: Path, cases: dict[str, CaseOutputs]) -> None:
    if not path.is_file():
        return
    for row in _read_csv(path, ("case", "axis", "slice", "score")):
        case = cases.get((row.get("case") or "").strip())
        if case is None:
            continue
        axis, idx, score = _num(path, row, "axis", int), _num(path, row, "slice", int), _num(path, row, "score")
        values = case.slice_scores.setdefault(axis, [])
        if idx >= len(values):
            values.extend([math.nan] * (idx + 1 - len(values)))
        values[idx] = score


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_json_object(path) if path.is_file() else None
