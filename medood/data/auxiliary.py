"""Auxiliary out-of-distribution datalists for outlier-exposure training (the heatmap decoder), never evaluation data.

Two sources, both built from data the evaluation never scores:

* **corruptions** of the ID training images (:func:`corruption_datalist`): ``{"image": id_path, "corruption":
  name, "corruption_seed": seed}`` items, applied by :class:`~medood.transforms.corruptions.Corruptd` after
  loading, reproducibly;
* **other organs / modalities** (:func:`auxiliary_datalist`): every image (2D) or NIfTI volume (3D) under given
  folders, e.g. another demo set's training split.

:func:`check_disjoint` refuses auxiliary items that lie inside an evaluation folder (an OOD test set, the ID test
split): training on them would make the evaluation meaningless.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medood.data._files import PathLike
from medood.data.datalist import nifti_datalist
from medood.data.errors import DataError
from medood.data.folders import image_datalist
from medood.transforms.corruptions import corruption_plan
from medood.utils.enums import OODKeys

__all__ = ["auxiliary_datalist", "check_disjoint", "corruption_datalist"]

logger = logging.getLogger(__name__)

IMAGE = OODKeys.IMAGE.value


def corruption_datalist(
    items: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    per_image: int = 1,
    seed: int = 0,
    keep: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``per_image`` corrupted copies of every item (the corruption is applied when the item is loaded).

    Args:
        items: ID training items ``{"image": path, ...}``.
        names: corruption names (:data:`~medood.transforms.corruptions.CORRUPTIONS`); each copy draws one.
        per_image: copies per item. Defaults to 1.
        seed: seed of the draws (names and per-copy seeds). Defaults to 0.
        keep: item fields copied to the auxiliary items besides ``"image"`` (never the label: auxiliary images have
            no class). Defaults to none.

    Returns:
        ``[{"image": path, "corruption": name, "corruption_seed": int, "aux_source": "corruption/<name>"}, ...]``.
    """
    if not names or per_image < 1:
        return []
    out = []
    for i, name, s in corruption_plan(len(items), names, per_image, seed):
        extra = {k: items[i][k] for k in keep if k in items[i]}
        aux = {IMAGE: items[i][IMAGE], "corruption": name, "corruption_seed": s, "aux_source": f"corruption/{name}"}
        out.append({**aux, **extra})
    return out


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_disjoint(items: Sequence[Mapping[str, Any]], forbidden: Sequence[PathLike], key: str = IMAGE) -> None:
    """Raise if any item's file lies inside one of the ``forbidden`` folders (symlinks resolved).

    Raises:
        DataError: naming the first offending file and the folder it lies in.
    """
    folders = [Path(os.path.realpath(f)) for f in forbidden]
    for item in items:
        path = Path(os.path.realpath(str(item[key])))
        for folder in folders:
            if _inside(path, folder):
                raise DataError(
                    path,
                    f"is inside the evaluation folder {folder}: it cannot be auxiliary training data",
                    "take auxiliary OOD images from other datasets' training splits or from corruptions of the ID "
                    "training images",
                )


def auxiliary_datalist(
    folders: Sequence[PathLike],
    volumes: bool = False,
    forbidden: Sequence[PathLike] = (),
    max_per_folder: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every image (or NIfTI volume, ``volumes=True``) under ``folders``, as auxiliary OOD items.

    Args:
        folders: folders searched recursively, e.g. other demo sets' ``train`` splits.
        volumes: list ``*.nii[.gz]`` volumes instead of 2D images. Defaults to False.
        forbidden: evaluation folders the items must not come from (:func:`check_disjoint`).
        max_per_folder: keep at most this many items per folder, a seeded random sample (the official code also
            samples its auxiliary set once). Defaults to all.
        seed: seed of the sample. Defaults to 0.

    Returns:
        ``[{"image": path, "aux_source": <folder name>}, ...]``, in path order per folder.

    Raises:
        DataError: a folder is missing or empty, or an item lies in a forbidden folder.
    """
    out: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    for folder in folders:
        found = nifti_datalist(folder) if volumes else image_datalist(folder)
        if max_per_folder is not None and len(found) > max_per_folder:
            found = [found[i] for i in sorted(rng.choice(len(found), max_per_folder, replace=False).tolist())]
        source = f"{Path(folder).parent.name}/{Path(folder).name}"
        out += [{IMAGE: d[IMAGE], "aux_source": source} for d in found]
    check_disjoint(out, forbidden)
    logger.info("auxiliary OOD images: %d from %s", len(out), [str(f) for f in folders])
    return out
