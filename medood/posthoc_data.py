"""Datalists of image folders for post-hoc OOD evaluation: OOD sets, folders to score, ID test + OOD sets.

Entries are MONAI-style dicts ``{"image": path, "case": name, ...}`` for
:func:`medood.posthoc_classifier.preprocessing`. Every sub-folder of an OOD folder is one OOD set; a folder that
holds images directly is one set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medood.data.errors import DataError
from medood.data.folders import class_folder_datalist
from medood.data.image2d import IMAGE_2D_SUFFIXES
from medood.utils.enums import OODKeys

__all__ = ["evaluation_datalist", "image_datalist", "ood_datalists", "scoring_datalist"]


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_2D_SUFFIXES and not p.name.startswith("."))


def image_datalist(root: str | os.PathLike[str], **fields: Any) -> list[dict[str, Any]]:
    """Every image under ``root`` (recursive) as ``{"image": path, "case": relative name, **fields}``.

    Raises:
        DataError: ``root`` is not a folder or holds no image.
    """
    base = Path(root)
    if not base.is_dir():
        raise DataError(base, "is not a folder", "give a folder of images")
    images = _images_under(base)
    if not images:
        raise DataError(base, "contains no images", f"expected files ending in {', '.join(IMAGE_2D_SUFFIXES)}")
    return [
        {"image": str(p), OODKeys.CASE.value: p.relative_to(base).with_suffix("").as_posix(), **fields} for p in images
    ]


def ood_datalists(roots: Sequence[str | os.PathLike[str]]) -> dict[str, list[dict[str, Any]]]:
    """OOD sets from folders, one set per sub-folder.

    Each sub-folder of a root is one set named ``<root>/<sub>``; a root holding image files directly (or no
    sub-folders) is one set named after it.

    Raises:
        DataError: a root is missing, holds no images, or one of its sub-folders holds none.
    """
    sets: dict[str, list[dict[str, Any]]] = {}
    for root in roots:
        base = Path(root)
        if not base.is_dir():
            raise DataError(base, "OOD folder does not exist")
        subs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
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


def scoring_datalist(root: str | os.PathLike[str], split: str | None = "test") -> list[dict[str, Any]]:
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
    root: str | os.PathLike[str],
    ood_roots: Sequence[str | os.PathLike[str]],
    id_split: str = "test",
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """ID test images followed by every OOD set, for the bundle's evaluation.

    ID entries have ``is_ood = 0``, ``label`` = their class and ``ood_set = "id"``; OOD entries ``is_ood = 1``,
    ``label = -1`` and ``ood_set`` = the set's name (see :func:`ood_datalists`).

    Raises:
        DataError: missing split or class folders, or an empty or missing OOD folder.
    """
    data, _ = class_folder_datalist(root, id_split, class_names)
    base = Path(root) / id_split
    out = [
        {
            **d,
            "is_ood": 0,
            "ood_set": "id",
            OODKeys.CASE.value: "id/" + Path(d["image"]).relative_to(base).with_suffix("").as_posix(),
        }
        for d in data
    ]
    if not ood_roots:
        raise DataError(Path(root), "no OOD folders given", "e.g. <root>/ood_near <root>/ood_far")
    for entries in ood_datalists(ood_roots).values():
        out.extend({**e, "label": -1} for e in entries)
    return out
