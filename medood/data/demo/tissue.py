"""Tissue labels (CSF / grey matter / white matter) of the demo brain subjects, deterministic per seed.

Every demo subject is the MNI152 anatomy under a seeded deformation (:mod:`medood.data.demo.brain`); the same
seed gives the same deformed GM / WM / CSF probability maps, so the labels of an existing demo set are re-derived
from its ``dataset.json`` seed without re-rendering the images. The label of a brain voxel is the most probable
tissue: 0 background (outside the brain mask), 1 CSF, 2 grey matter, 3 white matter. The derived brain mask is
checked against the stored ``*_brainmask.nii.gz`` of every subject, so a set made by another generator version is
refused rather than mislabelled. Lesions of test subjects are not labelled (the labels are the healthy twin's).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medood.data.demo.brain import BrainTemplate, _anatomy, _rng, _sample_params, _uncrop, load_template
from medood.data.demo.brain_set import save_nifti, subject_seed
from medood.data.errors import DataError
from medood.utils.io import atomic_write_text, read_json_object

__all__ = ["TISSUE_LABELS", "subject_tissue", "tissue_labels", "write_tissue_labels"]

logger = logging.getLogger(__name__)

#: Label values of the tissue maps.
TISSUE_LABELS: dict[int, str] = {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}
#: dataset.json list -> (split of the subject seeds, split of the anatomy seed).
_LISTS = {"training": "train", "validation": "val", "test": "test", "validation_lesion": "val"}
_SIZE_OF_SPACING = {2.0: "small", 1.0: "full"}


def tissue_labels(anatomy: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 labels from ``{"csf", "gm", "wm", "mask"}`` probability maps: argmax tissue inside the mask."""
    probs = np.stack([anatomy["csf"], anatomy["gm"], anatomy["wm"]])
    return np.where(anatomy["mask"], probs.argmax(0) + 1, 0).astype(np.uint8)


def subject_tissue(template: BrainTemplate, seed: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(tissue labels, brain mask)`` of the subject with ``seed`` on the template grid (uint8 both)."""
    params = _sample_params(_rng(seed, 0))
    anat = _anatomy(template, _rng(seed, 1), params)
    return _uncrop(tissue_labels(anat), template), _uncrop(anat["mask"].astype(np.uint8), template)


def _read_list(brain_dir: Path) -> dict[str, Any]:
    path = brain_dir / "dataset.json"
    datalist = read_json_object(path, "build the demo data first: medood data demo --out DIR --only brain_mri")
    try:
        seed, spacing = int(datalist["seed"]), float(datalist["spacing_mm"][0])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(path, f"is not a medood demo brain_mri dataset.json ({err})") from err
    if spacing not in _SIZE_OF_SPACING:
        raise DataError(path, f"spacing {spacing} mm is not a demo size (2 mm small, 1 mm full)")
    return {"datalist": datalist, "seed": seed, "size": _SIZE_OF_SPACING[spacing]}


def write_tissue_labels(brain_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``<case>_tissue.nii.gz`` for every subject of a demo ``brain_mri`` set and a datalist that lists them.

    Args:
        brain_dir: the demo ``brain_mri`` folder (with ``dataset.json``).
        out_dir: where to write; ``None`` writes next to the images and adds ``"tissue"`` to ``dataset.json``.
            Otherwise ``out_dir/dataset.json`` is a copy whose image paths are absolute and whose ``"tissue"``
            paths are relative to ``out_dir``.

    Returns:
        The datalist written.

    Raises:
        DataError: no demo ``dataset.json``, or a derived brain mask differs from the stored one.
    """
    src = Path(brain_dir).resolve()
    info = _read_list(src)
    datalist, template = info["datalist"], load_template(info["size"])
    dest = src if out_dir is None else Path(out_dir).resolve()
    for key, split in _LISTS.items():
        for index, entry in enumerate(datalist.get(key, [])):
            tissue, mask = subject_tissue(template, subject_seed(info["seed"], split, index))
            stored = src / entry["brainmask"]
            if not np.array_equal(np.asarray(nib.load(str(stored)).dataobj, dtype=np.uint8), mask):  # type: ignore[attr-defined]
                raise DataError(stored, "differs from the brain mask derived from the dataset seed", "rebuild the set")
            rel = f"{Path(entry['brainmask']).parent}/{entry['case']}_tissue.nii.gz"
            save_nifti(dest / rel, tissue, template.affine, kind="mask")
            if out_dir is not None:
                for k, v in list(entry.items()):
                    if isinstance(v, str) and (src / v).is_file():
                        entry[k] = str(src / v)
            entry["tissue"] = rel
        logger.info("tissue labels of %d %s subjects written", len(datalist.get(key, [])), key)
    datalist["tissue_labels"] = {str(k): v for k, v in TISSUE_LABELS.items()}
    path = dest / "dataset.json"
    atomic_write_text(path, json.dumps(datalist, indent=2) + "\n")
    return path
