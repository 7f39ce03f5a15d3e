"""A tiny multi-contrast brain dataset (the demo's dataset.json layout) for the 3D bundle tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SHAPE = (18, 16, 12)
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, 2.0, 0, -40.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])  # LAS-ish, anisotropic


def brain(rng: np.random.Generator, contrast: str) -> np.ndarray:
    """A sphere whose core and rim differ by contrast (T1w: bright core, T2w: bright rim, FLAIR: flat), or noise."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    core, rim = {"T1w": (1.0, 0.4), "T2w": (0.4, 1.0), "FLAIR": (0.7, 0.7), "noise": (0.0, 0.0)}[contrast]
    img = np.where(r < 0.5, core, rim) * (r < 0.9) + 0.05 * rng.standard_normal(SHAPE) * (r < 0.9)
    if contrast == "noise":
        img = np.abs(rng.standard_normal(SHAPE))
    return (np.clip(img, 0, None) * 1000).astype(np.int16)


def write_brain_dataset(root: Path) -> Path:
    """``root/{training,validation,test,ood}/s<i>_<contrast>.nii.gz`` and ``root/dataset.json`` (4 / 2 / 2 / 2
    subjects; OOD entry 0 is noise in every slot (``heavy_noise``), entry 1 in the T1w slot (``wrong_contrast_pd``))."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    lists: dict[str, list] = {"training": [], "validation": [], "test": [], "ood": []}
    for split, n in (("training", 4), ("validation", 2), ("test", 2), ("ood", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            entry: dict[str, object] = {"case": f"{split[:3]}-{i}"}
            for c in ("T1w", "T2w", "FLAIR"):
                kind = "noise" if split == "ood" and (i == 0 or c == "T1w") else c
                nib.save(nib.Nifti1Image(brain(rng, kind), AFFINE), str(root / split / f"s{i}_{c}.nii.gz"))
                entry[c] = f"{split}/s{i}_{c}.nii.gz"
            if split == "ood":
                entry["ood_type"] = ["heavy_noise", "wrong_contrast_pd"][i]
            lists[split].append(entry)
    (root / "dataset.json").write_text(json.dumps(lists))
    return root


LESION_SHAPE = (22, 20, 14)


def lesion_volume(rng: np.random.Generator, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    """A T1w-like ball of ``LESION_SHAPE`` (int16) and its lesion mask (uint8): with ``lesion``, a bright box inside."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in LESION_SHAPE], indexing="ij")
    inside = (zz**2 + yy**2 + xx**2) < 0.8
    img = (0.6 + 0.1 * rng.standard_normal(LESION_SHAPE)) * inside
    mask = np.zeros(LESION_SHAPE, np.uint8)
    if lesion:
        mask[(abs(zz) < 0.25) & (abs(yy) < 0.25) & (abs(xx) < 0.3) & inside] = 1
        img[mask > 0] = 1.5
    return (img * 1000).astype(np.int16), mask


def write_lesion_dataset(root: Path) -> Path:
    """Healthy T1w volumes for training (3) and validation (2), and a labelled test set (2): ``s0`` with a lesion,
    ``s1`` healthy, each with its mask (``label``) and ``is_anomalous``; ``root/dataset.json`` lists them (the MIM
    bundle's layout)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    lists: dict[str, list] = {"training": [], "validation": [], "test": []}
    for split, n in (("training", 3), ("validation", 2), ("test", 2)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            lesion = split == "test" and i == 0
            img, mask = lesion_volume(rng, lesion)
            nib.save(nib.Nifti1Image(img, AFFINE), str(root / split / f"s{i}_T1w.nii.gz"))
            entry = {"T1w": f"{split}/s{i}_T1w.nii.gz", "image": f"{split}/s{i}_T1w.nii.gz"}
            if split == "test":
                nib.save(nib.Nifti1Image(mask, AFFINE), str(root / split / f"s{i}_lesion.nii.gz"))
                entry.update(label=f"{split}/s{i}_lesion.nii.gz", is_anomalous=int(lesion))
            lists[split].append(entry)
    (root / "dataset.json").write_text(json.dumps(lists))
    return root
