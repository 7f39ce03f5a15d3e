"""Multi-task host data: datalists, brain and pathology preprocessing, interleaved loaders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import hed2rgb

from medood.data.errors import DataError
from medood.data.multitask import (
    InterleavedLoader,
    brain_case_sets,
    brain_datalist,
    brain_transforms,
    pathology_datalist,
    pathology_transforms,
)


def test_interleaved_loader_round_robin_and_current() -> None:
    loader = InterleavedLoader({"a": [1, 2, 3], "b": ["x"], "c": [10, 20]})
    seen = []
    for batch in loader:
        seen.append((loader.current, batch))
    assert seen == [("a", 1), ("b", "x"), ("c", 10), ("a", 2), ("c", 20), ("a", 3)]
    assert len(loader) == 6
    assert list(InterleavedLoader([[1], [2]])) == [1, 2]
    with pytest.raises(ValueError):
        InterleavedLoader({})


def _nifti(path: Path, data: np.ndarray, spacing: float = 2.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([spacing] * 3 + [1.0])), str(path))


def test_brain_datalist_transforms_and_case_sets(tmp_path: Path) -> None:
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, 30)] * 3, indexing="ij"))
    brain = (g**2).sum(0) < 0.8
    tissue = np.where(brain, 1 + ((g**2).sum(0) < 0.4) + ((g**2).sum(0) < 0.2), 0).astype(np.uint8)
    entry = {"case": "sub-000", "tissue": "sub-000_tissue.nii.gz"}
    for c in ("T1w", "T2w", "FLAIR"):
        _nifti(tmp_path / f"sub-000_{c}.nii.gz", (tissue * 100.0).astype(np.float32))
        entry[c] = f"sub-000_{c}.nii.gz"
    _nifti(tmp_path / "sub-000_tissue.nii.gz", tissue)
    ood = {c: f"sub-000_{c}.nii.gz" for c in ("T1w", "T2w", "FLAIR")} | {"case": "o", "ood_type": "noise"}
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [entry], "test": [entry], "ood": [ood]}))
    items = brain_datalist(tmp_path / "dataset.json", "training")
    assert [it["task"] for it in items] == ["brain_T1w", "brain_T2w", "brain_FLAIR"]
    assert items[0]["label"] == str(tmp_path / "sub-000_tissue.nii.gz") and items[1]["case"] == "sub-000_T2w"
    out = brain_transforms(True, pixdim=4.0, fov=(16, 16, 16))(items[0])
    assert out["image"].shape == out["label"].shape == (1, 16, 16, 16)
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0, 2.0, 3.0}, "nearest-neighbour labels"
    assert float(out["image"].max()) <= 3.0 and float(out["image"][0, 0, 0, 0]) == 0.0, "scaled, background 0"
    sets = brain_case_sets(tmp_path, ("T1w", "FLAIR"))
    assert sets == {"sub-000_T1w": ("brain_T1w", "noise"), "sub-000_FLAIR": ("brain_FLAIR", "noise")}
    with pytest.raises(DataError, match="no 'tissue'"):
        brain_datalist(tmp_path / "dataset.json", "ood")


def test_pathology_patches_become_one_slice_volumes(tmp_path: Path) -> None:
    hed = np.zeros((40, 40, 3))
    hed[:, :20, 0] = 0.2  # haematoxylin on the left half
    hed[:20, 20:, 2] = 0.5  # DAB top right
    rgb = (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)
    (tmp_path / "train" / "cls").mkdir(parents=True)
    Image.fromarray(rgb).save(tmp_path / "train" / "cls" / "p0.png")
    items = pathology_datalist(tmp_path, "train")
    assert items == [{"image": str(tmp_path / "train" / "cls" / "p0.png"), "task": "pathology", "case": "p0"}]
    out = pathology_transforms(True, size=20)(items[0])
    assert out["image"].shape == out["label"].shape == (1, 20, 20, 1)
    labels = out["label"][0, ..., 0]
    assert float(labels[5, 2]) == 4 and float(labels[2, 15]) == 5 and float(labels[15, 15]) == 0
    assert float(out["image"][0, 15, 15, 0]) < 0.05 < float(out["image"][0, 5, 2, 0]), "stain density"
    assert pathology_transforms(False, size=20)(items[0])["image"].shape == (1, 20, 20, 1)
