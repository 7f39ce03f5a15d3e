"""Data of the multi-task segmentation host: brain tissue at several MRI contrasts plus pathology stain patches.

One network segments every task with one context-agnostic head over the union of the tasks' labels
(:data:`HOST_LABELS`), as in Karimi & Gholipour's multi-task model: it has to recognise the context itself. The
2D pathology patches enter the 3D network as one-slice volumes ``(1, H, W, 1)``; the host's strides and
upsampling keep the last axis (see ``bundles/spectral_brain_mri_ood_classification``).

* brain volumes: T1w / T2w / FLAIR of the demo subjects with tissue labels (:mod:`medood.data.demo.tissue`),
  resampled to ``pixdim`` mm, intensities scaled by the 99th percentile of the brain, cropped / padded to ``fov``;
* pathology patches: RGB -> stain density ``1 - grey`` (one channel) with stain labels by colour deconvolution.

:class:`InterleavedLoader` alternates the batches of one loader per task (tasks have different shapes, so a batch
never mixes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    Orientationd,
    ResizeWithPadOrCropd,
    Spacingd,
)
from monai.transforms import Resized as MonaiResized

from medood.data._files import PathLike, require_dir, require_file
from medood.data.demo.ood import ood_contrasts
from medood.data.errors import DataError
from medood.data.folders import _images_in, class_folder_datalist
from medood.data.transforms import LoadImage2Dd, LoadVolumed
from medood.transforms.intensity import ScaleNonzeroPercentiled
from medood.transforms.stain import ImageAsSlabd, StainDensityd, StainLabelsd
from medood.utils.io import case_name, read_json_object

__all__ = [
    "BRAIN_CONTRASTS",
    "HOST_LABELS",
    "InterleavedLoader",
    "brain_case_sets",
    "brain_datalist",
    "brain_transforms",
    "image_folder_datalist",
    "pathology_datalist",
    "pathology_transforms",
]

#: The host's output channels (the union of the tasks' labels).
HOST_LABELS: dict[int, str] = {
    0: "background",
    1: "CSF",
    2: "grey matter",
    3: "white matter",
    4: "haematoxylin (nuclei)",
    5: "DAB",
}
BRAIN_CONTRASTS: tuple[str, ...] = ("T1w", "T2w", "FLAIR")
_PATHOLOGY_LABELS = {"haematoxylin_label": 4, "dab_label": 5}


def brain_datalist(
    dataset_json: PathLike, key: str, contrasts: Sequence[str] = BRAIN_CONTRASTS, label_key: str | None = "tissue"
) -> list[dict[str, Any]]:
    """``[{"image", "label", "task", "case"}, ...]``: every subject of ``key`` at every contrast.

    Args:
        dataset_json: a demo ``brain_mri`` ``dataset.json`` (with tissue labels for training: ``medood data
            tissue``); relative paths start at its folder.
        key: the list (``"training"``, ``"validation"``, ``"test"``, ``"ood"``).
        contrasts: the contrast keys of each entry. Defaults to T1w, T2w and FLAIR.
        label_key: the entry key of the label map (``None``: no labels). Defaults to ``"tissue"``.

    Raises:
        DataError: missing json, list, contrast or label.
    """
    path = require_file(dataset_json)
    data = read_json_object(path)
    if key not in data or not isinstance(data[key], list):
        raise DataError(path, f"has no list {key!r}", f"lists: {[k for k, v in data.items() if isinstance(v, list)]}")
    out = []
    for entry in data[key]:
        for contrast in contrasts:
            if contrast not in entry or (label_key is not None and label_key not in entry):
                missing = contrast if contrast not in entry else label_key
                raise DataError(path, f"entry {entry.get('case')} of {key!r} has no {missing!r}", "medood data tissue")
            item = {"image": str(path.parent / entry[contrast]), "task": f"brain_{contrast}"}
            item["case"] = f"{entry.get('case', Path(entry[contrast]).name)}_{contrast}"
            if label_key is not None:
                item["label"] = str(path.parent / entry[label_key])
            out.append(item)
    return out


def pathology_datalist(root: PathLike, split: str) -> list[dict[str, Any]]:
    """``[{"image", "task", "case"}, ...]`` of the class folders ``root/<split>/<class>/*.png``."""
    items, _ = class_folder_datalist(root, split)
    return [{"image": it["image"], "task": "pathology", "case": Path(it["image"]).stem} for it in items]


def image_folder_datalist(folder: PathLike, task: str = "pathology") -> list[dict[str, Any]]:
    """Every 2D image under ``folder`` (e.g. an OOD folder), sorted: ``[{"image", "task", "case"}, ...]``."""
    root = require_dir(folder)
    files = _images_in(root)
    if not files:
        raise DataError(root, "contains no 2D images")
    return [{"image": str(f), "task": task, "case": f.stem} for f in files]


def brain_transforms(
    with_label: bool = True, pixdim: float = 4.0, fov: Sequence[int] = (40, 48, 40), image_key: str = "image"
) -> Compose:
    """Preprocessing of brain volumes (any orientation, spacing, value range) onto the host's grid."""
    keys = [image_key, "label"] if with_label else [image_key]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    return Compose(
        [
            LoadVolumed(keys),
            Orientationd(keys, axcodes="RAS", labels=None),
            Spacingd(keys, pixdim=[pixdim] * 3, mode=modes),
            ScaleNonzeroPercentiled(image_key, upper=99.0),
            CropForegroundd(keys, source_key=image_key, allow_smaller=True),
            ResizeWithPadOrCropd(keys, spatial_size=list(fov)),
            EnsureTyped(keys, dtype=torch.float32),
        ]
    )


def pathology_transforms(with_label: bool = True, size: int = 64, image_key: str = "image") -> Compose:
    """Preprocessing of RGB pathology patches: stain labels, stain density, resize, one-slice volume."""
    keys = [image_key, "label"] if with_label else [image_key]
    steps: list[Any] = [LoadImage2Dd(image_key, scale=True)]
    if with_label:
        steps.append(StainLabelsd(image_key, label_key="label", **_PATHOLOGY_LABELS))
    steps += [
        StainDensityd(image_key),
        MonaiResized(keys, spatial_size=(size, size), mode=("area", "nearest") if with_label else ("area",)),
        ImageAsSlabd(keys),
        EnsureTyped(keys, dtype=torch.float32),
    ]
    return Compose(steps)


class InterleavedLoader:
    """Alternate the batches of several loaders (one per task) until every loader is exhausted once.

    Round robin: a batch of task 1, of task 2, ..., then task 1 again; a loader that runs out drops out of the
    rotation. ``len`` is the total number of batches, so it serves as an Ignite ``epoch_length``; ``current`` is the
    name of the loader that gave the last batch.

    Args:
        loaders: ``{task: loader}`` (or a sequence); each loader is re-iterated every epoch (e.g. reshuffled).
    """

    def __init__(self, loaders: Mapping[str, Iterable[Any]] | Sequence[Iterable[Any]]) -> None:
        named = dict(loaders) if isinstance(loaders, Mapping) else {str(i): ld for i, ld in enumerate(loaders)}
        if not named:
            raise ValueError("InterleavedLoader needs at least one loader")
        self.names, self.loaders = list(named), list(named.values())
        self.current: str | None = None

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders)  # type: ignore[arg-type,misc]

    def __iter__(self) -> Iterator[Any]:
        active = [(name, iter(loader)) for name, loader in zip(self.names, self.loaders)]
        while active:
            still = []
            for name, it in active:
                batch = next(it, None)
                if batch is not None:
                    still.append((name, it))
                    self.current = name
                    yield batch
            active = still


def brain_case_sets(
    dataset_dir: PathLike, contrasts: Sequence[str] = BRAIN_CONTRASTS, id_key: str = "test", ood_key: str = "ood"
) -> dict[str, tuple[str, str]]:
    """``{case: (task, set)}`` of a demo brain set: ``brain_<contrast>`` tasks, ``"id"`` or the ``ood_type``.

    Case names are the file names without extension (what the bundle writers use), e.g. ``sub-048_T1w``. OOD slots
    that are normal after preprocessing (:func:`~medood.data.demo.ood.ood_contrasts`: ``T1W_ONLY_KINDS`` outside
    T1w, every slot of an ``ID_AFTER_PREPROCESSING`` kind such as ``reoriented_pir``) are left out.
    """
    data = read_json_object(Path(dataset_dir) / "dataset.json")
    out: dict[str, tuple[str, str]] = {}
    for key, kind in ((id_key, None), (ood_key, "ood_type")):
        for entry in data.get(key, []):
            for contrast in contrasts if kind is None else ood_contrasts(str(entry[kind]), contrasts):
                out[case_name(entry[contrast])] = (f"brain_{contrast}", "id" if kind is None else str(entry[kind]))
    return out
