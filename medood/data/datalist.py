"""3D datalists: a folder of NIfTI scans, BIDS raw datasets, and Medical Segmentation Decathlon ``dataset.json``.

Each function returns a sorted list of ``{"image": path, ...}`` dictionaries ready for ``monai.data.Dataset``
with a :class:`~medood.data.transforms.LoadVolumed` (or ``LoadImaged``) transform, and raises
:class:`~medood.data.errors.DataError` naming the folder or file when nothing usable is found.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from medood.data._files import PathLike, require_dir, require_file
from medood.data.errors import DataError

__all__ = ["bids_datalist", "decathlon_datalist", "nifti_datalist"]

_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def _walk_files(root: Path) -> list[Path]:
    """Every non-hidden file under ``root``, following symlinks but never visiting a folder twice."""
    seen: set[str] = set()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or two links to one folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return found


def nifti_datalist(folder: PathLike) -> list[dict[str, str]]:
    """List every ``*.nii`` / ``*.nii.gz`` file under ``folder`` (recursive, symlinks followed), sorted by path.

    Hidden files and folders (names starting with ``.``, such as the macOS ``._*.nii.gz`` files inside the
    Decathlon archives) are skipped.

    Args:
        folder: the folder to scan.

    Returns:
        ``[{"image": path}, ...]``.

    Raises:
        DataError: the folder is missing or empty, or holds no NIfTI file.
    """
    root = require_dir(folder)
    files = sorted(str(p) for p in _walk_files(root) if _NIFTI_RE.search(p.name) and p.is_file())
    if not files:
        raise DataError(root, "contains no .nii or .nii.gz files (searched recursively)")
    return [{"image": f} for f in files]


def bids_datalist(root: PathLike, suffix: str = "T1w", datatype: str = "anat") -> list[dict[str, Any]]:
    """List ``sub-*/[ses-*/]<datatype>/sub-*_<suffix>.nii[.gz]`` in a BIDS raw dataset.

    ``derivatives/`` and ``sourcedata/`` are not searched (they are not ``sub-*`` folders).

    Args:
        root: the BIDS dataset root (the folder holding ``dataset_description.json`` and ``sub-*``).
        suffix: the BIDS suffix, e.g. ``"T1w"``, ``"T2w"``, ``"FLAIR"``. Defaults to ``"T1w"``.
        datatype: the BIDS datatype folder. Defaults to ``"anat"``.

    Returns:
        ``[{"image": path, "subject": "sub-01", "session": "ses-1" or None}, ...]`` sorted by path.

    Raises:
        DataError: no ``sub-*`` folder in ``root``, or no matching file.
    """
    base = require_dir(root, "BIDS dataset folder")
    subjects = sorted(p for p in base.glob("sub-*") if p.is_dir())
    if not subjects:
        raise DataError(base, "contains no sub-* folders", "is this the root of a BIDS dataset?")
    pattern = re.compile(rf"^sub-[a-zA-Z0-9]+(_[a-zA-Z0-9]+-[a-zA-Z0-9]+)*_{re.escape(suffix)}\.nii(\.gz)?$")
    items: list[dict[str, Any]] = []
    for sub in subjects:
        sessions: list[Path | None] = [p for p in sorted(sub.glob("ses-*")) if p.is_dir()] or [None]
        for ses in sessions:
            folder = (ses if ses is not None else sub) / datatype
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if pattern.match(f.name):
                    items.append({"image": str(f), "subject": sub.name, "session": ses.name if ses else None})
    if not items:
        raise DataError(base, f"has {len(subjects)} sub-* folders but no {datatype}/*_{suffix}.nii[.gz] files")
    return sorted(items, key=lambda d: d["image"])


def decathlon_datalist(
    json_path: PathLike, key: str = "training", base_dir: PathLike | None = None
) -> list[dict[str, Any]]:
    """Read a Medical Segmentation Decathlon style ``dataset.json`` with ``monai.data.load_decathlon_datalist``.

    Paths are resolved relative to ``base_dir`` (default: the json's folder). Every referenced ``image`` and
    ``label`` file must exist.

    Args:
        json_path: the ``dataset.json`` file.
        key: the list to read: ``"training"``, ``"validation"``, ``"test"`` or any other list-valued key.
            Defaults to ``"training"``.
        base_dir: folder the relative paths start from. Defaults to ``None`` (the json's folder).

    Returns:
        The datalist, e.g. ``[{"image": path, "label": path}, ...]`` (``test`` lists give ``{"image": path}``).

    Raises:
        DataError: the json is missing or invalid, the key is absent (the message lists the list-valued keys),
            or referenced files are missing (the first few are named).
    """
    p = require_file(json_path)
    try:
        content = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(p, f"is not valid JSON: {e}") from e
    if not isinstance(content, dict):
        raise DataError(p, f"holds a JSON {type(content).__name__}, expected an object with datalist keys")
    lists = sorted(k for k, v in content.items() if isinstance(v, list))
    if key not in content:
        raise DataError(p, f"has no key {key!r}", f"list-valued keys: {lists}")
    if not isinstance(content[key], list):
        raise DataError(p, f"key {key!r} is a {type(content[key]).__name__}, expected a list")
    base = Path(base_dir) if base_dir is not None else p.parent
    try:
        datalist = load_decathlon_datalist(p, is_segmentation=True, data_list_key=key, base_dir=base)
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(p, f"has a malformed {key!r} list: {e}") from e
    missing = [
        str(v)
        for item in datalist
        for field in ("image", "label")
        for v in ([item[field]] if isinstance(item.get(field), str) else item.get(field) or [])
        if not Path(v).exists()
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            p,
            f"{len(missing)} files listed under {key!r} do not exist: {shown}",
            f"paths are resolved relative to {base}",
        )
    return datalist


def bundle_datalist(
    dataset_dir: str | os.PathLike[str], key: str = "test", contrast: str = "T1w", keep: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The cases a bundle processes.

    If ``dataset_dir`` holds a ``dataset.json`` (MONAI Decathlon style, as the demo data), the list under ``key``
    is used; each entry's ``contrast`` path (else its ``"image"``) becomes ``"image"``, and the case-level fields in
    ``keep`` (e.g. ``"is_anomalous"``, ``"label"``) are carried along (paths are made absolute). Otherwise every
    ``*.nii`` / ``*.nii.gz`` under ``dataset_dir`` (recursive, symlinks followed) is a case.

    Raises:
        DataError: the folder does not exist, the key or contrast is missing, or no scan is found.
    """
    root = Path(dataset_dir)
    js = root / "dataset.json"
    if not js.is_file():
        return nifti_datalist(root)
    content = json.loads(js.read_text(encoding="utf-8"))
    if key not in content or not isinstance(content[key], list):
        lists = sorted(k for k, v in content.items() if isinstance(v, list))
        raise DataError(js, f"has no list {key!r}", f"lists: {lists}")
    out = []
    for entry in content[key]:
        rel = entry.get(contrast, entry.get("image"))
        if rel is None:
            raise DataError(js, f"an entry of {key!r} has neither {contrast!r} nor 'image': {entry}")
        item: dict[str, Any] = {"image": str((root / rel).resolve())}
        for k in keep:
            if k in entry:
                v = entry[k]
                item[k] = str((root / v).resolve()) if isinstance(v, str) and v.endswith((".nii", ".nii.gz")) else v
        if not Path(item["image"]).is_file():
            raise DataError(item["image"], f"is listed in {js} under {key!r} but does not exist")
        out.append(item)
    if not out:
        raise DataError(js, f"list {key!r} is empty")
    return out
