"""Datalists of an MRI-contrast classification task (which contrast is this volume?) and its OOD volumes.

The input is a Decathlon-style ``dataset.json`` with one entry per subject and one path per contrast, as the demo
brain set writes it (``{"case": "sub-000", "T1w": "train/sub-000_T1w.nii.gz", "T2w": ..., "FLAIR": ...}``). Each
contrast slot of an entry becomes one item labelled with the contrast's index; OOD entries (e.g. the demo's
``ood`` list, each with an ``ood_type``) give items with ``is_ood = 1`` and the OOD set they belong to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medood.data._files import PathLike
from medood.data.demo.ood import ID_AFTER_PREPROCESSING
from medood.utils.enums import OODKeys
from medood.utils.errors import DataError
from medood.utils.io import read_json_object

__all__ = ["CONTRASTS", "contrast_datalist", "contrast_evaluation_datalist", "contrast_ood_datalist"]

#: The demo brain set's contrasts, in label order.
CONTRASTS = ("T1w", "T2w", "FLAIR")


def _entries(dataset_dir: PathLike, key: str) -> tuple[Path, list[dict[str, Any]]]:
    js = Path(dataset_dir) / "dataset.json"
    content = read_json_object(js, "expected a Decathlon-style dataset.json with one path per contrast")
    if not isinstance(content.get(key), list):
        lists = sorted(k for k, v in content.items() if isinstance(v, list))
        raise DataError(js, f"has no list {key!r}", f"lists: {lists}")
    if not content[key]:
        raise DataError(js, f"list {key!r} is empty")
    return js, content[key]


def _item(js: Path, key: str, entry: Mapping[str, Any], contrast: str, index: int) -> dict[str, Any]:
    rel = entry.get(contrast)
    case = str(entry.get("case", Path(str(entry.get("image", f"{key}_{index}"))).name))
    if rel is None:
        raise DataError(js, f"entry {case!r} of {key!r} has no {contrast!r} path", f"its keys: {sorted(entry)}")
    path = (js.parent / rel).resolve()
    if not path.is_file():
        raise DataError(path, f"is listed in {js} under {key!r} ({contrast} of {case}) but does not exist")
    return {OODKeys.IMAGE.value: str(path), OODKeys.CASE.value: f"{case}_{contrast}", "contrast": contrast}


def contrast_datalist(
    dataset_dir: PathLike, key: str = "training", contrasts: Sequence[str] = CONTRASTS, **fields: Any
) -> list[dict[str, Any]]:
    """One item per contrast of every entry of ``dataset.json[key]``, labelled with the contrast's index.

    Items: ``{"image": absolute path, "label": contrasts.index(contrast), "case": "<case>_<contrast>",
    "contrast": name, **fields}``.

    Raises:
        DataError: no ``dataset.json``, no such list, an entry without one of the contrasts, or a missing file.
    """
    js, entries = _entries(dataset_dir, key)
    return [
        {**_item(js, key, e, c, i), OODKeys.LABEL.value: k, **fields}
        for i, e in enumerate(entries)
        for k, c in enumerate(contrasts)
    ]


def contrast_ood_datalist(
    dataset_dir: PathLike,
    key: str = "ood",
    contrasts: Sequence[str] = CONTRASTS,
    slots: Mapping[str, Sequence[str]] | None = None,
    skip: Sequence[str] = ID_AFTER_PREPROCESSING,
    set_field: str = "ood_type",
) -> list[dict[str, Any]]:
    """The OOD volumes of ``dataset.json[key]``: ``is_ood = 1``, ``label = -1``, ``ood_set = entry[set_field]``.

    Args:
        dataset_dir: the folder of ``dataset.json``.
        key: the list of OOD entries. Defaults to ``"ood"``.
        contrasts: the contrast slots an entry may hold. Defaults to :data:`CONTRASTS`.
        slots: per OOD type, the slots that hold the OOD image (the demo's ``wrong_contrast_pd`` and
            ``inverted_t1w`` alter the T1w slot only; ``ct_head`` holds one CT in every slot). Types not listed
            use every slot of ``contrasts``.
        skip: OOD types left out. Defaults to :data:`~medood.data.demo.ood.ID_AFTER_PREPROCESSING` (e.g.
            ``reoriented_pir``, which the preprocessing's reorientation makes ID); pass it too when you add your own.
        set_field: the entry field naming its OOD set. Defaults to ``"ood_type"``.

    Raises:
        DataError: see :func:`contrast_datalist`; also an entry without ``set_field``, or nothing left.
    """
    js, entries = _entries(dataset_dir, key)
    out = []
    for i, entry in enumerate(entries):
        if set_field not in entry:
            raise DataError(js, f"an entry of {key!r} has no {set_field!r} field: {sorted(entry)}")
        kind = str(entry[set_field])
        if kind in skip:
            continue
        for c in (slots or {}).get(kind, contrasts):
            out.append({**_item(js, key, entry, c, i), OODKeys.LABEL.value: -1, "is_ood": 1, "ood_set": kind})
    if not out:
        raise DataError(js, f"no OOD volume left in {key!r} after skipping {list(skip)}")
    return out


def contrast_evaluation_datalist(
    dataset_dir: PathLike,
    id_key: str = "test",
    ood_key: str = "ood",
    contrasts: Sequence[str] = CONTRASTS,
    ood_slots: Mapping[str, Sequence[str]] | None = None,
    skip: Sequence[str] = ID_AFTER_PREPROCESSING,
) -> list[dict[str, Any]]:
    """The ID test volumes (``is_ood = 0``, ``ood_set = "id"``, ``label`` = contrast) followed by the OOD ones.

    Raises:
        DataError: see :func:`contrast_datalist` and :func:`contrast_ood_datalist`.
    """
    ids = contrast_datalist(dataset_dir, id_key, contrasts, is_ood=0, ood_set="id")
    return ids + contrast_ood_datalist(dataset_dir, ood_key, contrasts, ood_slots, skip)
