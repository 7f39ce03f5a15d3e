"""2D classification datasets as MONAI-style datalists: class folders, ISIC, HAM10000, OOD-evaluation folders.

Class folders follow the Kvasir-v2 / GastroVision layout; the image folders of post-hoc OOD evaluation are the
OOD sets, the folders to score, and the ID test set plus the OOD sets.

The dataset readers return ``(datalist, class_names)`` where ``datalist`` is a list of ``{"image": path, "label":
int}`` dictionaries (ready for ``monai.data.Dataset`` with a :class:`~medood.data.transforms.LoadImage2Dd`
transform) and ``label`` indexes ``class_names``. The OOD helpers (:func:`ood_datalists`,
:func:`scoring_datalist`, :func:`evaluation_datalist`) give ``{"image", "case", ...}`` entries for
:func:`medood.data.classification.classifier_preprocessing`: every sub-folder of an OOD folder is one OOD set; a
folder that holds images directly is one set.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medood.data._files import PathLike, require_dir, require_file
from medood.data.errors import DataError
from medood.data.image2d import IMAGE_2D_SUFFIXES
from medood.utils.enums import OODKeys

__all__ = [
    "class_folder_datalist",
    "evaluation_datalist",
    "ham10000_datalist",
    "image_datalist",
    "isic2019_datalist",
    "ood_datalists",
    "relative_case",
    "scoring_datalist",
]

logger = logging.getLogger(__name__)

_SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}
ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_2D_SUFFIXES and not p.name.startswith("."))


def relative_case(image: PathLike, base: PathLike, prefix: str = "") -> str:
    """``prefix`` + the image's path relative to ``base`` without its suffix (``"polyp/img_00"``)."""
    return prefix + Path(image).relative_to(base).with_suffix("").as_posix()


def class_folder_datalist(
    root: PathLike, split: str | None = None, class_names: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """List ``root/[<split>/]<class>/*.{png,jpg,jpeg,tif,tiff,bmp}`` (the Kvasir-v2 / GastroVision layout).

    Images are found recursively inside each class folder; hidden files and other extensions are ignored.

    Args:
        root: the dataset folder.
        split: a sub-folder of ``root`` holding the class folders (``"train"``, ``"val"``, ...). Defaults to
            ``None`` (``root`` holds the class folders directly).
        class_names: the classes to use, in label order; other folders are ignored. Defaults to ``None``
            (every sub-folder, sorted by name).

    Returns:
        ``(datalist, class_names)``, the datalist sorted by label then path.

    Raises:
        DataError: missing or empty root, unknown split (the message lists the available ones), a missing
            class folder, or a class folder without images.
    """
    base = require_dir(root, "dataset folder")
    if split is not None:
        available = [p.name for p in _subfolders(base)]
        if split not in available:
            raise DataError(base, f"has no split folder {split!r}", f"available: {available}")
        base = require_dir(base / split, "split folder")
    folders = {p.name: p for p in _subfolders(base)}
    if not folders:
        raise DataError(base, "contains no class folders", "expected <root>/[<split>/]<class>/<image files>")
    if split is None and set(folders) <= _SPLIT_NAMES:
        raise DataError(base, f"holds split folders {sorted(folders)}, not class folders", "pass split=...")
    if class_names is None:
        names = sorted(folders)
    else:
        names = [str(c) for c in class_names]
        missing = [c for c in names if c not in folders]
        if missing:
            raise DataError(base, f"has no folder for classes {missing}", f"folders present: {sorted(folders)}")
        ignored = sorted(set(folders) - set(names))
        if ignored:
            logger.info("%s: ignoring folders not in class_names: %s", base, ignored)
    datalist: list[dict[str, Any]] = []
    for label, name in enumerate(names):
        images = _images_in(folders[name])
        if not images:
            raise DataError(
                folders[name],
                f"class folder {name!r} contains no images",
                f"expected files ending in {', '.join(IMAGE_2D_SUFFIXES)}",
            )
        datalist.extend({"image": str(p), "label": label} for p in images)
    return datalist, names


def _read_csv(path: PathLike) -> tuple[Path, list[str], list[dict[str, str]]]:
    p = require_file(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c.strip() for c in (reader.fieldnames or [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(p, f"is not a readable CSV file: {e}") from e
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    if not rows:
        raise DataError(p, "has no data rows")
    return p, columns, rows


def _image_path(folders: Sequence[Path], name: str, ext: str) -> Path | None:
    for folder in folders:
        candidate = folder / f"{name}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _missing_error(where: Path | Sequence[Path], missing: list[str], total: int, ext: str) -> DataError:
    shown = ", ".join(f"{m}{ext}" for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    folder = where if isinstance(where, Path) else where[0]
    return DataError(folder, f"{len(missing)} of {total} images listed in the CSV are missing: {shown}{more}")


def _positive_class(gt: Path, row_no: int, row: dict[str, str], classes: Sequence[str]) -> str:
    positives = []
    for c in classes:
        try:
            value = float(row.get(c, "") or "nan")
        except ValueError:
            raise DataError(gt, f"row {row_no} ({row['image']}): column {c} is not a number: {row[c]!r}") from None
        if value != value:  # NaN: empty or missing cell
            raise DataError(gt, f"row {row_no} ({row['image']}): column {c} is empty")
        if value > 0.5:
            positives.append(c)
    if len(positives) != 1:
        found = "no positive class" if not positives else f"{len(positives)} positive classes {positives}"
        raise DataError(gt, f"row {row_no} ({row['image']}) has {found}, expected exactly one")
    return positives[0]


def isic2019_datalist(
    image_dir: PathLike, gt_csv: PathLike, image_ext: str = ".jpg"
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read the ISIC 2019 training ground truth (also fits ISIC 2018 Task 3 / HAM10000's one-hot CSV).

    The CSV has an ``image`` column and one column per class holding one-hot floats
    (``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK`` for ISIC 2019). Images are ``<image_dir>/<image><image_ext>``.

    Args:
        image_dir: the folder of images (e.g. ``ISIC_2019_Training_Input``).
        gt_csv: the ground-truth CSV (e.g. ``ISIC_2019_Training_GroundTruth.csv``).
        image_ext: image file extension. Defaults to ``".jpg"``.

    Returns:
        ``(datalist, class_names)`` in CSV order; the class columns keep the CSV order, and ``UNK`` is dropped
        when no row is positive for it. Each item also has ``"case"`` (the image id).

    Raises:
        DataError: no ``image`` column, no class columns, a row with no or several positive classes (or a
            non-numeric cell), or missing images (the first few are named).
    """
    folder = require_dir(image_dir, "image folder")
    gt, columns, rows = _read_csv(gt_csv)
    if "image" not in columns:
        raise DataError(gt, f"has no 'image' column (columns: {columns})", "is this the ground-truth CSV?")
    classes = [c for c in columns if c and c != "image"]
    if not classes:
        raise DataError(gt, "has no class columns next to 'image'")
    labels = [_positive_class(gt, i + 2, row, classes) for i, row in enumerate(rows)]  # row 1 is the header
    if "UNK" in classes and "UNK" not in labels:
        classes.remove("UNK")
    missing, datalist = [], []
    for row, cls in zip(rows, labels):
        path = _image_path([folder], row["image"], image_ext)
        if path is None:
            missing.append(row["image"])
            continue
        datalist.append({"image": str(path), "label": classes.index(cls), "case": row["image"]})
    if missing:
        raise _missing_error(folder, missing, len(rows), image_ext)
    return datalist, classes


def ham10000_datalist(
    image_dirs: PathLike | Sequence[PathLike], metadata_csv: PathLike, image_ext: str = ".jpg"
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read HAM10000 as distributed on the Harvard Dataverse (``HAM10000_metadata.csv`` with a ``dx`` column).

    Args:
        image_dirs: the image folder(s), e.g. ``[HAM10000_images_part_1, HAM10000_images_part_2]``.
        metadata_csv: the metadata CSV with columns ``lesion_id, image_id, dx, ...``.
        image_ext: image file extension. Defaults to ``".jpg"``.

    Returns:
        ``(datalist, class_names)`` with the ``dx`` codes sorted (``akiec, bcc, bkl, df, mel, nv, vasc``); items
        also hold ``"case"`` (image id) and ``"lesion_id"`` (use it to split without lesion leakage).

    Raises:
        DataError: missing ``image_id``/``dx`` columns, empty ``dx``, or missing images (the first few named).
    """
    dirs: list[PathLike] = [image_dirs] if isinstance(image_dirs, (str, os.PathLike)) else list(image_dirs)
    folders = [require_dir(d, "image folder") for d in dirs]
    meta, columns, rows = _read_csv(metadata_csv)
    for col in ("image_id", "dx"):
        if col not in columns:
            raise DataError(meta, f"has no {col!r} column (columns: {columns})", "is this HAM10000_metadata.csv?")
    for i, row in enumerate(rows):
        if not row["dx"]:
            raise DataError(meta, f"row {i + 2} ({row['image_id']}) has an empty dx")
    classes = sorted({row["dx"] for row in rows})
    missing, datalist = [], []
    for row in rows:
        path = _image_path(folders, row["image_id"], image_ext)
        if path is None:
            missing.append(row["image_id"])
            continue
        datalist.append(
            {
                "image": str(path),
                "label": classes.index(row["dx"]),
                "case": row["image_id"],
                "lesion_id": row.get("lesion_id", ""),
            }
        )
    if missing:
        raise _missing_error(folders, missing, len(rows), image_ext)
    return datalist, classes


def image_datalist(root: PathLike, **fields: Any) -> list[dict[str, Any]]:
    """Every image under ``root`` (recursive) as ``{"image": path, "case": relative name, **fields}``.

    Raises:
        DataError: ``root`` is not a folder or holds no image.
    """
    base = Path(root)
    if not base.is_dir():
        raise DataError(base, "is not a folder", "give a folder of images")
    images = _images_in(base)
    if not images:
        raise DataError(base, "contains no images", f"expected files ending in {', '.join(IMAGE_2D_SUFFIXES)}")
    return [{"image": str(p), OODKeys.CASE.value: relative_case(p, base), **fields} for p in images]


def ood_datalists(roots: Sequence[PathLike]) -> dict[str, list[dict[str, Any]]]:
    """OOD sets from folders, one set per sub-folder.

    Each sub-folder of a root is one set named ``<root>/<sub>``; a root holding image files directly (or no
    sub-folders) is one set named after it. Entries have ``is_ood = 1``, ``ood_set`` = the set's name and
    ``case = "<set>/<relative name>"``.

    Raises:
        DataError: a root is missing, holds no images, or one of its sub-folders holds none.
    """
    sets: dict[str, list[dict[str, Any]]] = {}
    for root in roots:
        base = Path(root)
        if not base.is_dir():
            raise DataError(base, "OOD folder does not exist")
        subs = _subfolders(base)
        direct = [p for p in base.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_2D_SUFFIXES]
        groups = [(base.name, base)] if direct or not subs else [(f"{base.name}/{p.name}", p) for p in subs]
        for name, folder in groups:
            if name in sets:
                raise DataError(folder, f"OOD set name {name!r} is used twice", "give OOD roots with distinct names")
            entries = image_datalist(folder, is_ood=1, ood_set=name)
            for e in entries:
                e[OODKeys.CASE.value] = f"{name}/{e[OODKeys.CASE.value]}"
            sets[name] = entries
    return sets


def scoring_datalist(root: PathLike, split: str | None = "test") -> list[dict[str, Any]]:
    """The images a bundle's inference scores, as ``{"image", "case"}``.

    Every image under ``root/<split>`` if that folder exists (a class-folder dataset), else every image under
    ``root`` (a plain folder), searched recursively.

    Raises:
        DataError: no folder or no image.
    """
    base = Path(root)
    if split and (base / split).is_dir():
        base = base / split
    return image_datalist(base)


def evaluation_datalist(
    root: PathLike, ood_roots: Sequence[PathLike], id_split: str = "test", class_names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """ID test images followed by every OOD set, for the bundle's evaluation.

    ID entries have ``is_ood = 0``, ``label`` = their class, ``ood_set = "id"`` and ``case = "id/<class>/<name>"``;
    OOD entries ``is_ood = 1``, ``label = -1`` and ``ood_set`` = the set's name (see :func:`ood_datalists`).

    Raises:
        DataError: missing split or class folders, or an empty or missing OOD folder.
    """
    data, _ = class_folder_datalist(root, id_split, class_names)
    base = Path(root) / id_split
    out = [
        {**d, "is_ood": 0, "ood_set": "id", OODKeys.CASE.value: relative_case(d["image"], base, "id/")} for d in data
    ]
    if not ood_roots:
        raise DataError(Path(root), "no OOD folders given", "e.g. <root>/ood_near <root>/ood_far")
    for entries in ood_datalists(ood_roots).values():
        out.extend({**e, "label": -1} for e in entries)
    return out
