"""3D datalists: a folder of NIfTI scans, BIDS raw datasets, and Medical Segmentation Decathlon ``dataset.json``.

Each function returns a sorted list of ``{"image": path, ...}`` dictionaries ready for ``monai.data.Dataset``
with a :class:`~medood.data.transforms.LoadVolumed` (or ``LoadImaged``) transform, and raises
:class:`~medood.data.errors.DataError` naming the folder or file when nothing usable is found.

``dataset.json`` lists are checked before anything is loaded: valid JSON object, the list present and non-empty,
every listed file present, no path leading outside the dataset folder (``../../elsewhere``, an absolute path
elsewhere; pass ``allow_outside=True`` for a json kept apart from its images), and no file or ``case`` id listed
twice (two outputs would overwrite each other).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from medood.data._files import PathLike, require_dir, require_file, walk_files
from medood.data.errors import DataError
from medood.utils.io import read_json_object as _read_json_object

__all__ = [
    "bids_datalist",
    "bundle_datalist",
    "decathlon_datalist",
    "entry_paths",
    "nifti_datalist",
    "read_json_object",
]

_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def read_json_object(path: PathLike) -> dict[str, Any]:
    """Read a JSON file that must hold an object (a ``dataset.json``); empty files are refused too.

    Raises:
        DataError: missing or empty file, not UTF-8, invalid JSON (the message gives line and column), or a
            top-level value other than an object.
    """
    return _read_json_object(require_file(path))


def entry_paths(value: Any) -> list[str]:
    """The path(s) of an ``image`` / ``label`` field: a string or a list of strings (a class index gives none)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def _outside(base: Path, target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` lies outside ``base``.

    Judged on the written path (``..`` collapsed, links not followed), so a dataset whose files are symlinks into
    a shared store is still inside.
    """
    root = os.path.normpath(os.path.abspath(base))
    path = os.path.normpath(os.path.join(root, target))
    return os.path.commonpath([root, path]) != root


def _check_entries(json_path: Path, key: str, items: list[Any], base: Path, allow_outside: bool) -> None:
    """No path outside ``base`` (unless allowed), no file or ``case`` id listed twice; ``items`` as written."""
    seen_files: dict[str, int] = {}
    seen_cases: dict[str, int] = {}
    for i, entry in enumerate(items):
        item = {"image": entry} if isinstance(entry, str) else entry
        if not isinstance(item, dict):
            continue  # reported by MONAI's parser as a malformed list
        for field in ("image", "label"):
            for v in entry_paths(item.get(field)):
                if not allow_outside and _outside(base, v):
                    raise DataError(
                        json_path,
                        f"entry {i} of {key!r} points outside the dataset folder {base}: {v}",
                        "keep the files inside the dataset folder, or pass allow_outside=True if this is intended",
                    )
        image = item.get("image")
        if isinstance(image, str):
            norm = os.path.normpath(os.path.join(base, image))
            if norm in seen_files:
                raise DataError(json_path, f"lists {image} twice under {key!r} (entries {seen_files[norm]} and {i})")
            seen_files[norm] = i
        case = item.get("case")
        if case is not None:
            if str(case) in seen_cases:
                raise DataError(
                    json_path, f"has the case id {case!r} twice under {key!r} (entries {seen_cases[str(case)]} and {i})"
                )
            seen_cases[str(case)] = i


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
    files = sorted(str(p) for p in walk_files(root) if _NIFTI_RE.search(p.name) and p.is_file())
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
    json_path: PathLike, key: str = "training", base_dir: PathLike | None = None, allow_outside: bool = False
) -> list[dict[str, Any]]:
    """Read a Medical Segmentation Decathlon style ``dataset.json`` with ``monai.data.load_decathlon_datalist``.

    Paths are resolved relative to ``base_dir`` (default: the json's folder). Every referenced ``image`` and
    ``label`` file must exist.

    Args:
        json_path: the ``dataset.json`` file.
        key: the list to read: ``"training"``, ``"validation"``, ``"test"`` or any other list-valued key.
            Defaults to ``"training"``.
        base_dir: folder the relative paths start from. Defaults to ``None`` (the json's folder).
        allow_outside: accept paths that lead outside ``base_dir``. Defaults to ``False``.

    Returns:
        The datalist, e.g. ``[{"image": path, "label": path}, ...]`` (``test`` lists give ``{"image": path}``).

    Raises:
        DataError: the json is missing or invalid, the key is absent (the message lists the list-valued keys),
            a path leads outside ``base_dir``, a file or ``case`` id is listed twice, or referenced files are
            missing (the first few are named).
    """
    p = require_file(json_path)
    content = read_json_object(p)
    lists = sorted(k for k, v in content.items() if isinstance(v, list))
    if key not in content:
        raise DataError(p, f"has no key {key!r}", f"list-valued keys: {lists}")
    if not isinstance(content[key], list):
        raise DataError(p, f"key {key!r} is a {type(content[key]).__name__}, expected a list")
    base = Path(base_dir) if base_dir is not None else p.parent
    _check_entries(p, key, content[key], base, allow_outside)
    try:
        datalist = load_decathlon_datalist(p, is_segmentation=True, data_list_key=key, base_dir=base)
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(p, f"has a malformed {key!r} list: {e}") from e
    missing = [
        str(v)
        for item in datalist
        for field in ("image", "label")
        for v in entry_paths(item.get(field))
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
    dataset_dir: str | os.PathLike[str],
    key: str = "test",
    contrast: str = "T1w",
    keep: Sequence[str] = (),
    allow_outside: bool = False,
) -> list[dict[str, Any]]:
    """The cases a bundle processes.

    If ``dataset_dir`` holds a ``dataset.json`` (MONAI Decathlon style, as the demo data), the list under ``key``
    is used; each entry's ``contrast`` path (else its ``"image"``) becomes ``"image"``, and the case-level fields in
    ``keep`` (e.g. ``"is_anomalous"``, ``"label"``) are carried along (paths are made absolute). Otherwise every
    ``*.nii`` / ``*.nii.gz`` under ``dataset_dir`` (recursive, symlinks followed) is a case.

    Raises:
        DataError: the folder does not exist, the json is invalid, the key or contrast is missing, an entry leads
            outside ``dataset_dir`` (unless ``allow_outside``), a file is listed twice, or no scan is found.
    """
    root = Path(dataset_dir)
    js = root / "dataset.json"
    if not js.is_file():
        return nifti_datalist(root)
    content = read_json_object(js)
    if key not in content or not isinstance(content[key], list):
        lists = sorted(k for k, v in content.items() if isinstance(v, list))
        raise DataError(js, f"has no list {key!r}", f"lists: {lists}")
    out = []
    for entry in content[key]:
        if not isinstance(entry, dict):
            raise DataError(js, f"an entry of {key!r} is a {type(entry).__name__}, expected an object: {entry!r}")
        rel = entry.get(contrast, entry.get("image"))
        if not isinstance(rel, str):
            raise DataError(js, f"an entry of {key!r} has no {contrast!r} or 'image' path: {entry}")
        if not allow_outside and _outside(root, rel):
            raise DataError(
                js,
                f"an entry of {key!r} points outside the dataset folder {root}: {rel}",
                "keep the files inside the dataset folder, or pass allow_outside=True if this is intended",
            )
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
    _check_entries(js, key, out, root, allow_outside=True)
    return out
