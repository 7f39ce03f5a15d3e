"""Validate a dataset folder (or one file) before a long run: every file through the reader a run would use.

:func:`check_dataset` walks the folder (symbolic links followed, every folder once, hidden files skipped) and
checks, by content and extension:

* NIfTI (``.nii``, ``.nii.gz``) with :func:`~medood.data.readers.load_volume` (3D expected unless told
  otherwise; files listed as ``label`` in a ``dataset.json`` may be all zero, as healthy lesion masks are);
* DICOM files (by their ``DICM`` magic or a ``.dcm`` suffix), grouped into series by SeriesInstanceUID, each
  series with :func:`~medood.data.dicom.load_dicom_series`;
* 2D images (PNG, JPEG, TIFF, BMP) with :func:`~medood.data.image2d.read_image_2d`;
* MedMNIST ``.npz`` files with :func:`~medood.data.medmnist.validate_npz`;
* ``dataset.json`` with :func:`~medood.data.datalist.decathlon_datalist` for every list it holds;
* other ``.json`` / ``.yaml`` / ``.yml`` files with :func:`medood.utils.config.read_config` (parsed, never run);
* checkpoints (``.pt``, ``.pth``, ``.ckpt``) with :func:`medood.utils.checkpoints.load_checkpoint` (weights only;
  a pickle that would build Python objects is refused, never run).

A folder holding the files of several DICOM series side by side is reported as
:func:`~medood.data.dicom.load_dicom_series` refuses it.

Other files are counted and not checked. Every unusable input gives one problem line: the reader's one-line
:class:`~medood.utils.errors.DataError`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from medood.data._files import PathLike, require_file, sniff_format, walk_files
from medood.data.datalist import decathlon_datalist, entry_paths, read_json_object
from medood.data.dicom import group_dicom_files, load_dicom_series, several_series
from medood.data.image2d import IMAGE_2D_SUFFIXES, read_image_2d
from medood.data.medmnist import validate_npz
from medood.data.readers import load_volume
from medood.utils.checkpoints import load_checkpoint
from medood.utils.config import CONFIG_SUFFIXES, read_config
from medood.utils.errors import DataError, printable_path

__all__ = ["CheckReport", "check_dataset"]

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


@dataclass
class CheckReport:
    """What :func:`check_dataset` found: inputs checked per kind, files not checked, and one line per problem."""

    checked: Counter[str] = field(default_factory=Counter)
    other: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every input is usable."""
        return not self.problems

    def summary(self) -> str:
        """One line: what was checked and how many inputs are unusable."""
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.checked.items())) or "nothing"
        other = f"; {self.other} other files not checked" if self.other else ""
        return f"checked {kinds}: {len(self.problems)} unusable{other}"

    def add(self, error: DataError) -> None:
        """Record an unusable input."""
        self.problems.append(str(error))

    def run(self, kind: str, fn: Callable[[], Any]) -> Any:
        """Count one input of ``kind`` and check it with ``fn``; a :class:`DataError` is recorded, not raised."""
        self.checked[kind] += 1
        try:
            return fn()
        except DataError as e:
            self.add(e)
            return None


def _kind(path: Path) -> str:
    name = path.name.lower()
    if _NIFTI.search(name):
        return "NIfTI"
    if name == "dataset.json":
        return "dataset.json"
    if name.endswith(CONFIG_SUFFIXES):
        return "config"
    if name.endswith(".npz"):
        return ".npz"
    if name.endswith(CHECKPOINT_SUFFIXES):
        return "checkpoint"
    if name.endswith(IMAGE_2D_SUFFIXES):
        return "2D image"
    content = sniff_format(path) if path.is_file() and path.stat().st_size > 0 else "empty"
    if name.endswith(".dcm") or content == "dicom":
        return "DICOM"
    if content.startswith(("nifti1", "nifti2")):  # a volume under another name: load_volume refuses its name
        return "NIfTI"
    return "other"


def _is_datalist(value: Any) -> bool:
    """A list of entries (dicts, or image paths as in the Decathlon ``test`` lists), not e.g. class names."""
    if not isinstance(value, list) or not value:
        return False
    return all(isinstance(v, dict) for v in value) or all(
        isinstance(v, str) and v.lower().endswith((".nii", ".nii.gz", ".dcm", *IMAGE_2D_SUFFIXES)) for v in value
    )


def _label_files(report: CheckReport, json_path: Path) -> set[str]:
    """Check every list of a ``dataset.json``; return the resolved paths its entries list as ``label``."""
    content = report.run("dataset.json", lambda: read_json_object(json_path))
    if content is None:
        return set()
    labels: set[str] = set()
    for key in sorted(k for k, v in content.items() if _is_datalist(v)):
        for entry in content[key]:
            if isinstance(entry, dict):
                labels.update(str((json_path.parent / v).resolve()) for v in entry_paths(entry.get("label")))
        try:
            decathlon_datalist(json_path, key)
        except DataError as e:
            report.add(e)
    return labels


def _check_dicom(report: CheckReport, files: list[Path], max_bytes: int | None) -> None:
    errors: list[DataError] = []
    dicom = [f for f in files if _readable(report, f)]
    series = group_dicom_files(dicom, errors)
    for e in errors:
        report.add(e)
    grouped = {f for items in series.values() for f, _ in items}
    for f in dicom:
        if f not in grouped and not any(str(e.path) == str(f) for e in errors):
            report.add(DataError(f, "is a DICOM file without a SeriesInstanceUID"))
    per_folder: dict[Path, Counter[str]] = {}
    for uid, items in series.items():
        for f, _ in items:
            per_folder.setdefault(f.parent, Counter())[uid] += 1
    for folder, counts in sorted(per_folder.items()):
        if len(counts) > 1:  # load_dicom_series(folder) refuses it the same way
            report.add(several_series(folder, dict(counts)))
    for items in series.values():
        files_of_series = [f for f, _ in items]
        report.run("DICOM series", partial(load_dicom_series, files_of_series, max_bytes=max_bytes))


def _readable(report: CheckReport, path: Path) -> bool:
    try:
        require_file(path)
    except DataError as e:
        report.add(e)
        return False
    return True


def _check_file(report: CheckReport, path: Path, kind: str, labels: set[str], opts: dict[str, Any]) -> None:
    if kind == "NIfTI":
        is_label = str(path.resolve()) in labels
        report.run(
            kind,
            lambda: load_volume(
                path, expect_3d=opts["expect_3d"], allow_constant=is_label, max_bytes=opts["max_bytes"]
            ),
        )
    elif kind == "2D image":
        report.run(kind, lambda: read_image_2d(path, max_bytes=opts["max_bytes"]))
    elif kind == ".npz":
        report.run(kind, lambda: validate_npz(path))
    elif kind == "checkpoint":
        report.run(kind, lambda: load_checkpoint(path))
    elif kind == "config":
        report.run(kind, lambda: read_config(path, bundle_root=opts["root"]))


def check_dataset(path: PathLike, expect_3d: bool = True, max_bytes: int | None = None) -> CheckReport:
    """Check every input under ``path`` (a folder, searched recursively, or one file); see the module docstring.

    Args:
        path: the dataset folder or a single file.
        expect_3d: NIfTI files must be single 3D volumes (as the 3D bundles need). Defaults to ``True``.
        max_bytes: memory budget of one decoded image. Defaults to ``None`` (``$MEDOOD_MAX_IMAGE_BYTES``, else
            4 GiB).

    Returns:
        The report; nothing is raised for bad inputs.
    """
    root = Path(path)
    report = CheckReport()
    if not root.is_dir():
        if not _readable(report, root):
            return report
        files, base = [root], root.parent
    else:
        files = walk_files(root)
        base = root
        if not files:
            report.add(DataError(root, "holds no files to check"))
            return report
    opts = {"expect_3d": expect_3d, "max_bytes": max_bytes, "root": base if root.is_dir() else None}
    kinds = {f: _kind(f) if f.exists() else "missing" for f in files}
    labels: set[str] = set()
    for f in files:
        if kinds[f] == "dataset.json":
            labels |= _label_files(report, f)
    for f in files:
        if kinds[f] == "missing":
            _readable(report, f)
        elif kinds[f] == "other":
            report.other += 1
        elif kinds[f] not in ("dataset.json", "DICOM") and _readable(report, f):
            _check_file(report, f, kinds[f], labels, opts)
    dicom = [f for f in files if kinds[f] == "DICOM"]
    if dicom:
        _check_dicom(report, dicom, max_bytes)
    logger.info("%s: %s", printable_path(root), report.summary())
    return report
