"""The run-folder format: every file name, suffix and CSV layout of a run's ``output_dir``, defined once.

A run folder holds:

* ``run.json`` (:data:`RUN_MANIFEST`): ``{"format", "run_id", "status", "started", "ended", "config", "versions",
  "cases", "map_kind", "overlays", "files"}``: the run that owns the folder, the cases it wrote (reports and the
  Slicer scene read only these), the map kind of its file names and its overlay files;
* ``scores.csv`` (:data:`SCORES_CSV`): ``case,score,flagged[,label][,image]`` (extra columns, e.g. ``ood_set``, after
  these); ``flagged`` is ``1`` / ``0``, or empty when the run had no threshold;
* ``slice_scores.csv``: ``case,axis,slice,score`` (long format; ``axis`` is the input file's voxel axis);
* ``thresholds.json``: the healthy-calibration thresholds and the map colour window (keys in
  :func:`read_thresholds`);
* per case ``<case>_<kind>_map.nii.gz`` (float32 map on the input grid; ``kind`` = ``anomaly``, ``cam``, ``heatmap``
  ...), ``<case>_<kind>_seg.nii.gz`` or ``.seg.nrrd`` (mask), ``<case>_<kind>_overlay.png`` (2D inputs);
* ``errors.csv`` (cases that could not be read), ``metrics.json`` / ``results.json`` (evaluation).

Every cell a run writes into a CSV goes through :func:`escape_cell` (no spreadsheet formula injection) and every
reader through :func:`unescape_cell`. A run starts with :meth:`RunFolder.start`: stale temporaries of a killed run
are removed, and a folder that holds another run is refused unless the run resumes or overwrites it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medood.utils.errors import DataError
from medood.utils.io import atomic_write, atomic_write_text, read_json_object

__all__ = [
    "ERRORS_CSV",
    "METRICS_FILE",
    "PROGRESS_JOURNAL",
    "RESULTS_FILE",
    "RUN_MANIFEST",
    "RUN_MODES",
    "SCORES_COLUMNS",
    "SCORES_CSV",
    "SLICE_SCORES_CSV",
    "THRESHOLDS_FILE",
    "RunFolder",
    "RunFolderError",
    "ScoreRow",
    "escape_cell",
    "map_file",
    "map_suffix",
    "overlay_file",
    "read_manifest",
    "read_score_rows",
    "read_slice_scores",
    "read_thresholds",
    "remove_stale_temporaries",
    "seg_file",
    "seg_files",
    "unescape_cell",
    "write_score_rows",
    "write_slice_scores",
    "write_thresholds",
]

logger = logging.getLogger(__name__)

SCORES_CSV = "scores.csv"
SLICE_SCORES_CSV = "slice_scores.csv"
THRESHOLDS_FILE = "thresholds.json"
RUN_MANIFEST = "run.json"
ERRORS_CSV = "errors.csv"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"
#: the columns of ``scores.csv``, in order (``label`` and ``image`` only when some case has them)
SCORES_COLUMNS = ("case", "score", "flagged", "label", "image")
#: ``new`` (refuse a folder that holds another run), ``resume`` (continue the run of the same config), ``overwrite``
RUN_MODES = ("new", "resume", "overwrite")
#: environment variable giving the run mode when neither the config nor the CLI does
RUN_MODE_ENV = "MEDOOD_RUN_MODE"
FORMAT_VERSION = 1


class RunFolderError(DataError):
    """A run folder that cannot be used as asked (another run's outputs, a config that differs on resume)."""


# ------------------------------------------------------------------------------------------------ file names
def map_suffix(kind: str = "anomaly", ext: str = ".nii.gz") -> str:
    """``_<kind>_map<ext>``: the suffix of a case's map file (``_anomaly_map.nii.gz``, ``_cam_map.nii.gz`` ...)."""
    return f"_{kind}_map{ext}"


def map_file(case: str, kind: str = "anomaly") -> str:
    """``<case>_<kind>_map.nii.gz``."""
    return f"{case}{map_suffix(kind)}"


def seg_files(case: str, kind: str = "anomaly") -> tuple[str, str]:
    """The mask file names of a case, in order of preference (a ``.seg.nrrd`` carries its segment name)."""
    return f"{case}_{kind}_seg.seg.nrrd", f"{case}_{kind}_seg.nii.gz"


def seg_file(case: str, kind: str = "anomaly") -> str:
    """``<case>_<kind>_seg.nii.gz`` (what the result writer writes)."""
    return seg_files(case, kind)[1]


def overlay_file(case: str, kind: str = "anomaly") -> str:
    """``<case>_<kind>_overlay.png`` (2D inputs)."""
    return f"{case}_{kind}_overlay.png"


#: per-case files of any kind, and the named files of a run (what ``overwrite`` clears)
_CASE_FILE = re.compile(r".+_[A-Za-z0-9]+_(map\.nii\.gz|map\.nii|seg\.nii\.gz|seg\.seg\.nrrd|overlay\.png)$")
_RUN_FILES = {
    SCORES_CSV, SLICE_SCORES_CSV, THRESHOLDS_FILE, RUN_MANIFEST, ERRORS_CSV, METRICS_FILE, RESULTS_FILE,
    "results.md", "report.html", "worst_slices.png", "open_in_slicer.py", "predictions.csv",
}  # fmt: skip
#: the progress journal of a running run, one per rank (:meth:`RunFolder.record`; removed when the run finishes)
PROGRESS_JOURNAL = ".progress.rank{rank}.jsonl"
_PROGRESS = re.compile(r"^\.progress\.rank\d+\.jsonl$")
#: temporaries of :mod:`medood.utils.io` (``.<name>.<random>.tmp<ext>``)
_TEMPORARY = re.compile(r"^\..+\.[^.]+\.tmp(\..*)?$")


# ------------------------------------------------------------------------------------------------ CSV cells
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: Any) -> Any:
    """A CSV cell safe to open in a spreadsheet: text starting with ``= + - @``, tab or CR gets a leading ``'``.

    Numbers are left alone (a negative score stays a number); floats are written with 7 significant digits.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return f"{value:.7g}"
    if isinstance(value, str) and (value.startswith(_FORMULA_START) or value.startswith("'")):
        return "'" + value
    return "" if value is None else value


def unescape_cell(value: str) -> str:
    """The text :func:`escape_cell` was given (a leading ``'`` removed)."""
    return value[1:] if value.startswith("'") else value


@dataclass
class ScoreRow:
    """One row of ``scores.csv``."""

    case: str
    score: float
    flagged: int | None = None
    label: int | None = None
    image: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def write_score_rows(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], extra_columns: Sequence[str] = ()
) -> Path:
    """Atomically write ``scores.csv``: ``case,score,flagged``, ``label`` / ``image`` if any row has them, extras.

    Every cell is escaped (:func:`escape_cell`).
    """
    cols = ["case", "score", "flagged"] + [c for c in ("label", "image") if any(r.get(c) is not None for r in rows)]
    cols += [c for c in extra_columns if c not in cols]
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([escape_cell(r.get(c)) for c in cols])
    return Path(path)


def _int_cell(path: Path, line: int, key: str, raw: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        return int(float(raw))
    except ValueError:
        raise DataError(path, f"line {line}: {key} {raw!r} is not a number") from None


def read_score_rows(path: str | os.PathLike[str], require_flagged: bool = True) -> list[ScoreRow]:
    """Read a run's ``scores.csv`` (the one reader; :func:`write_score_rows` wrote it).

    Args:
        path: the file.
        require_flagged: the header must hold ``case,score,flagged`` (a run folder); ``False`` accepts any
            ``case,score[,...]`` file (scores made elsewhere).

    Raises:
        DataError: missing file or column, an empty or repeated case, a score that is not a finite number.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "does not exist")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            raw_rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(p, f"cannot be read as CSV ({e})") from None
    need = ["case", "score", "flagged"] if require_flagged else ["case", "score"]
    missing = [c for c in need if c not in header]
    if missing:
        raise DataError(p, f"has no {missing} column(s) (header: {header})", hint=f"expected {','.join(need)}")
    rows: list[ScoreRow] = []
    seen: set[str] = set()
    for i, r in enumerate(raw_rows, start=2):
        case = unescape_cell((r.get("case") or "").strip())
        if not case:
            raise DataError(p, f"line {i}: empty case name")
        if case in seen:
            raise DataError(p, f"line {i}: case {case!r} appears twice")
        seen.add(case)
        try:
            score = float(r.get("score") or "")
        except ValueError:
            raise DataError(p, f"line {i}: score {r.get('score')!r} of case {case!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(p, f"line {i}: score of case {case!r} is {score}")
        image = unescape_cell((r.get("image") or "").strip()) or None
        extra = {k: unescape_cell(v or "") for k, v in r.items() if k not in SCORES_COLUMNS and k is not None}
        rows.append(
            ScoreRow(case, score, _int_cell(p, i, "flagged", r.get("flagged") or ""),
                     _int_cell(p, i, "label", r.get("label") or ""), image, extra)
        )  # fmt: skip
    return rows


def write_slice_scores(path: str | os.PathLike[str], rows: Iterable[tuple[str, int, int, float]]) -> Path:
    """Atomically write ``slice_scores.csv`` in long format ``case,axis,slice,score``."""
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["case", "axis", "slice", "score"])
        for case, axis, idx, score in rows:
            w.writerow([escape_cell(case), axis, idx, escape_cell(float(score))])
    return Path(path)


def read_slice_scores(path: str | os.PathLike[str]) -> list[tuple[str, int, int, float]]:
    """The rows of ``slice_scores.csv`` (:func:`write_slice_scores`) as ``(case, axis, slice, score)``.

    Raises:
        DataError: missing file or a row that is not ``case,axis,slice,score``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "does not exist")
    out: list[tuple[str, int, int, float]] = []
    with p.open(newline="", encoding="utf-8") as f:
        for i, r in enumerate(csv.DictReader(f), start=2):
            try:
                out.append((unescape_cell(r["case"]), int(r["axis"]), int(r["slice"]), float(r["score"])))
            except (KeyError, TypeError, ValueError):
                raise DataError(p, f"line {i}: not a case,axis,slice,score row") from None
    return out


# ------------------------------------------------------------------------------------------------ thresholds.json
def write_thresholds(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Atomically write ``thresholds.json`` (``medood.handlers.writers.thresholds_record`` makes the record)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return atomic_write_text(Path(run_dir) / THRESHOLDS_FILE, json.dumps(dict(record), indent=2) + "\n")


def read_thresholds(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``thresholds.json`` of a run folder as a dict (empty when the file is absent).

    Keys (all optional): ``map_threshold``, ``score_threshold`` (numbers or null), ``window`` (``[low, high]`` or
    null), ``map_percentile``, ``score_percentile``, ``id_scores`` (healthy score quantiles), ``n_calibration``
    (the number of healthy calibration images).

    Raises:
        DataError: the file is not a JSON object or a value has the wrong type.
    """
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return {}
    data = read_json_object(path, hint="see medood.io.run_folder for the expected keys")
    for key in ("map_threshold", "score_threshold"):
        if data.get(key) is not None and not isinstance(data[key], int | float):
            raise DataError(path, f"{key} must be a number or null, got {data[key]!r}")
    window = data.get("window")
    if window is not None and (not isinstance(window, list) or len(window) != 2):
        raise DataError(path, f"window must be [low, high] or null, got {window!r}")
    return data


# ------------------------------------------------------------------------------------------------ run.json
def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``run.json`` of a run folder, or ``None`` when the folder has none."""
    path = Path(run_dir) / RUN_MANIFEST
    return read_json_object(path, hint="the run manifest of medood.io.run_folder") if path.is_file() else None


def remove_stale_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files a killed run left (``.<name>.<random>.tmp*``); returns what was removed."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    gone = [p for p in root.rglob(".*") if p.is_file() and _TEMPORARY.match(p.name)]
    for p in gone:
        p.unlink(missing_ok=True)
    if gone:
        logger.warning("removed %d temporary file(s) a killed run left in %s", len(gone), root)
    return gone


def _config_digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("medood", "monai", "torch", "numpy", "nibabel"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class RunFolder:
    """A run's ownership of its ``output_dir``: start checks and cleans it, ``finish`` records what the run wrote.

    Args:
        root: the output folder.
        config: what identifies the run's settings (JSON-able; its digest decides whether ``resume`` may continue).
        mode: ``"new"`` (default: refuse a folder that holds another run's files), ``"resume"`` (continue a run of the
            same config: its complete cases are kept, the cases seen again are redone) or ``"overwrite"`` (clear the
            other run's files first). ``None`` reads the ``MEDOOD_RUN_MODE`` environment variable, else ``"new"``.
        map_kind: the map kind of the file names (``anomaly``, ``cam``, ``heatmap`` ...).
        overlays: glob patterns of the run's overlay pictures (default: ``*_<kind>_overlay.png``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        config: Mapping[str, Any] | None = None,
        mode: str | None = None,
        map_kind: str = "anomaly",
        overlays: Sequence[str] | None = None,
    ) -> None:
        mode = mode or os.environ.get(RUN_MODE_ENV) or "new"
        if mode not in RUN_MODES:
            raise ValueError(f"run mode must be one of {RUN_MODES}, got {mode!r}")
        self.root, self.mode, self.map_kind = Path(root), mode, map_kind
        self.config = dict(config or {})
        self.overlays = list(overlays) if overlays is not None else [f"*_{map_kind}_overlay.png"]
        self.previous: dict[str, Any] | None = None
        self.manifest: dict[str, Any] = {}

    def _other_files(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if not _TEMPORARY.match(p.name)) if self.root.is_dir() else []

    def start(self) -> RunFolder:
        """Clean stale temporaries, refuse / clear / continue another run's folder, write ``run.json`` (running).

        Raises:
            RunFolderError: the folder holds another run and the mode is ``new``, or ``resume`` meets a run of
                another config.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.root)
        own_id = self.manifest.get("run_id")  # started before: the same run, attached to a second engine pass
        self.previous = read_manifest(self.root)
        others = [] if own_id and (self.previous or {}).get("run_id") == own_id else self._other_files()
        if others and self.mode == "new":
            raise RunFolderError(
                self.root, f"holds {len(others)} file(s) of another run (e.g. {others[0].name})",
                hint="pass --resume to continue that run or --overwrite to clear it (bundles: --run_mode resume or "
                "--run_mode overwrite, or MEDOOD_RUN_MODE=resume|overwrite), or choose an empty output folder",
            )  # fmt: skip
        if others and self.mode == "resume":
            prev = self.previous or {}
            if prev.get("config_digest") != _config_digest(self.config):
                raise RunFolderError(
                    self.root, "holds a run of another configuration (or no run.json): it cannot be resumed",
                    hint="pass --overwrite to clear it, or choose an empty output folder",
                )  # fmt: skip
        if others and self.mode == "overwrite":
            self.clear()
            self.previous = None
        run_id = own_id or ((self.previous or {}).get("run_id") if self.mode == "resume" else None)
        self.manifest = {
            "format": FORMAT_VERSION, "run_id": run_id or uuid.uuid4().hex, "status": "running",
            "started": _now(), "ended": None, "config": self.config, "config_digest": _config_digest(self.config),
            "versions": _versions(), "map_kind": self.map_kind, "overlays": self.overlays,
            "cases": list((self.previous or {}).get("cases", [])) if self.mode == "resume" else [],
        }  # fmt: skip
        self._write()
        return self

    def clear(self) -> list[Path]:
        """Remove the run files of the folder (named run files and per-case maps, masks, overlays); others stay."""
        gone = [
            p for p in self.root.iterdir()
            if p.is_file() and (p.name in _RUN_FILES or _CASE_FILE.match(p.name) or _PROGRESS.match(p.name))
        ]  # fmt: skip
        for p in gone:
            p.unlink()
        if gone:
            logger.warning("--overwrite: removed %d file(s) of the previous run in %s", len(gone), self.root)
        return gone

    @property
    def previous_cases(self) -> list[str]:
        """The cases a resumed run had completed (empty unless ``mode == "resume"``)."""
        return list((self.previous or {}).get("cases", [])) if self.mode == "resume" else []

    # ------------------------------------------------------------------ progress journal (resume after kill -9)
    def record(self, case: str, row: Mapping[str, Any], slices: Sequence[Any] = (), files: Sequence[str] = (),
               rank: int = 0) -> None:  # fmt: skip
        """Append a finished case (its ``scores.csv`` row, slice rows and file names) to this rank's journal.

        One JSON line per case, flushed to disk (``fsync``) after the case's files were written, so that a run
        killed at any point leaves a journal of complete cases only (a torn last line is ignored when read).
        """
        path = self.root / PROGRESS_JOURNAL.format(rank=rank)
        line = json.dumps({"case": case, "row": dict(row), "slices": list(slices), "files": list(files)})
        with path.open("ab") as f:
            if f.tell():
                with path.open("rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":  # a line torn by a kill: start a fresh one
                        f.write(b"\n")
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def progress(self) -> dict[str, dict[str, Any]]:
        """The cases every rank's journal recorded (``{case: {"row", "slices", "files"}}``, the last record wins)."""
        out: dict[str, dict[str, Any]] = {}
        for path in sorted(self.root.glob(".progress.rank*.jsonl")):
            for line in path.read_bytes().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # torn by a kill
                if isinstance(rec, dict) and isinstance(rec.get("case"), str):
                    out[rec["case"]] = rec
        return out

    def clear_progress(self) -> None:
        """Remove the progress journals (the run's CSVs hold their rows now)."""
        for path in self.root.glob(".progress.rank*.jsonl"):
            path.unlink(missing_ok=True)

    def finish(self, cases: Sequence[str], status: str = "complete") -> Path:
        """Record the run's cases (``scores.csv`` order), end time and status in ``run.json``; drop the journals."""
        if not self.manifest:
            raise RuntimeError("RunFolder.finish before start")
        self.clear_progress()
        files = sorted(p.name for p in self.root.iterdir() if p.is_file() and not _TEMPORARY.match(p.name))
        self.manifest.update(cases=list(dict.fromkeys(cases)), ended=_now(), status=status, files=files)
        return self._write()

    def _write(self) -> Path:
        return atomic_write_text(self.root / RUN_MANIFEST, json.dumps(self.manifest, indent=2, default=str) + "\n")
