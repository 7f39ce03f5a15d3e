"""Write the ``brain_mri`` demo set: NIfTI volumes, a MONAI Decathlon-style ``dataset.json`` and a README."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medood.data.demo.brain import Subject, load_template, synthesize_subject
from medood.data.demo.lesions import LESION_KINDS
from medood.data.demo.mri_physics import CONTRASTS
from medood.data.demo.ood import BRAIN_OOD_KINDS, make_brain_ood
from medood.data.demo.parallel import run_jobs
from medood.utils.io import atomic_path, atomic_write_text

__all__ = ["BRAIN_COUNTS", "lesion_types_for_test", "save_nifti", "subject_seed", "write_brain_mri"]

logger = logging.getLogger(__name__)

#: Default subject counts per size: (train, val, test, ood).
BRAIN_COUNTS: dict[str, tuple[int, int, int, int]] = {"small": (40, 8, 16, 7), "full": (12, 4, 8, 7)}
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3, "ood": 4, "val_lesion": 5}
_IMAGE_SLOPE = 5e-4  # float image = int16 * slope (well below the noise level of every contrast)


def subject_seed(seed: int, split: str, index: int) -> tuple[int, int, int]:
    """The subject seed used by the builder for subject ``index`` of ``split`` (train/val/test/ood).

    Pass it to :func:`medood.data.demo.brain.synthesize_subject` to re-create a subject (e.g. the healthy twin of a
    lesioned test subject: same seed, ``lesion_type=None``).
    """
    return (int(seed), _SPLIT_CODE[split], int(index))


def lesion_types_for_test(n_test: int) -> list[str]:
    """Lesion type of each test subject: a quarter (at least one) healthy, the rest cycling through the kinds."""
    n_healthy = max(1, n_test // 4) if n_test > 1 else 0
    n_lesion = n_test - n_healthy
    return [LESION_KINDS[i % len(LESION_KINDS)] for i in range(n_lesion)] + ["none"] * n_healthy


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, kind: str = "image", code: int = 4) -> None:
    """Write a NIfTI atomically.

    Args:
        path: destination (``.nii.gz``).
        data: the volume.
        affine: voxel-to-world affine (written to both sform and qform).
        kind: ``"image"`` (float -> int16 with slope 5e-4), ``"hu"`` (int16, slope 1) or ``"mask"`` (uint8).
            Defaults to ``"image"``.
        code: sform/qform code (4 = MNI152 space, 1 = scanner). Defaults to 4.
    """
    if kind == "mask":
        raw = data.astype(np.uint8)
    elif kind == "hu":
        raw = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
    else:
        scaled = np.rint(data / _IMAGE_SLOPE)
        if scaled.max() > 32767:
            logger.warning("%s: %d voxels above the int16 range were clipped", path, int((scaled > 32767).sum()))
        raw = np.clip(scaled, 0, 32767).astype(np.int16)
    img = nib.Nifti1Image(raw, affine)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    img.header.set_xyzt_units("mm")
    if kind == "image":
        img.header.set_slope_inter(_IMAGE_SLOPE, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _write_subject(root: Path, folder: str, name: str, subject: Subject, code: int = 4) -> dict[str, Any]:
    """Write a subject's files; return its datalist entry (paths relative to ``root``)."""
    entry: dict[str, Any] = {}
    kind = "hu" if "ct" in subject.params else "image"
    for contrast in CONTRASTS:
        rel = f"{folder}/{name}_{contrast}.nii.gz"
        save_nifti(root / rel, subject.images[contrast], subject.affine, kind=kind, code=code)
        entry[contrast] = rel
    rel = f"{folder}/{name}_brainmask.nii.gz"
    save_nifti(root / rel, subject.brainmask, subject.affine, kind="mask", code=code)
    entry["brainmask"] = rel
    entry["image"] = entry["T1w"]
    return entry


def _job(out: Path, size: str, seed: int, job: tuple[str, int, int, str]) -> dict[str, Any]:
    """Make and write one subject; ``job`` = (split, index in split, subject number, lesion type or OOD kind)."""
    split, index, number, kind = job
    template = load_template(size)
    sub_seed = subject_seed(seed, split, index)
    if split == "ood":
        subject, description = make_brain_ood(kind, template, sub_seed)
        name = f"ood-{index:03d}_{kind}"
        entry = _write_subject(out, "ood", name, subject, code=1 if kind == "ct_head" else 4)
        return {"case": name, **entry, "ood_type": kind, "description": description}
    name = f"sub-{number:03d}"
    if split == "val_lesion":  # a healthy validation subject's lesioned twin (lesions seeded apart from test)
        subject = synthesize_subject(
            template, subject_seed(seed, "val", index), kind, lesion_seed=subject_seed(seed, split, index)
        )
    else:
        subject = synthesize_subject(template, sub_seed, None if split != "test" else kind)
    entry = {"case": name, **_write_subject(out, split, name, subject)}
    if split in ("test", "val_lesion"):
        entry["label"] = f"{split}/{name}_lesion.nii.gz"
        save_nifti(out / entry["label"], subject.lesion, subject.affine, kind="mask")
        entry.update(lesion_type=kind, is_anomalous=int(kind != "none"), lesion_voxels=int(subject.lesion.sum()))
    return entry


def _jobs(counts: tuple[int, int, int, int]) -> list[tuple[str, int, int, str]]:
    """All subjects to make, in datalist order; subject numbers are unique across train/val/test."""
    n_train, n_val, n_test, n_ood = counts
    jobs = [("train", i, i, "none") for i in range(n_train)]
    jobs += [("val", i, n_train + i, "none") for i in range(n_val)]
    jobs += [("test", i, n_train + n_val + i, k) for i, k in enumerate(lesion_types_for_test(n_test))]
    jobs += [("ood", i, i, BRAIN_OOD_KINDS[i % len(BRAIN_OOD_KINDS)]) for i in range(n_ood)]
    jobs += [("val_lesion", i, n_train + i, LESION_KINDS[i % len(LESION_KINDS)]) for i in range(n_val)]
    return jobs


def write_brain_mri(
    out: Path,
    size: str,
    seed: int,
    counts: tuple[int, int, int, int] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Build ``<out>/brain_mri``.

    Args:
        out: the ``brain_mri`` folder (created).
        size: ``"small"`` (2 mm) or ``"full"`` (1 mm).
        seed: base seed.
        counts: (train, val, test, ood) subject counts. Defaults to :data:`BRAIN_COUNTS` of ``size``.
        workers: worker processes. Defaults to :func:`~medood.data.demo.parallel.default_workers`.

    Returns:
        The datalist written to ``dataset.json``.
    """
    counts = BRAIN_COUNTS[size] if counts is None else counts
    template = load_template(size)  # loaded before any fork, so workers share it
    start = time.perf_counter()
    jobs = _jobs(counts)
    entries = run_jobs(functools.partial(_job, out, size, seed), jobs, workers)
    logger.info("brain_mri: %d volumes written in %.1f s", len(jobs), time.perf_counter() - start)
    datalist: dict[str, Any] = {
        "name": "medood-demo-brain-mri",
        "description": (
            f"Synthetic multi-contrast brain MRI from the MNI ICBM152 2009a template ({template.spacing:g} mm), "
            "healthy train/val subjects, test subjects with and without synthetic lesions, and OOD volumes. "
            "See README.md."
        ),
        "reference": "MNI ICBM152 2009a (Fonov et al. 2011) from the nilearn wheel; see README.md",
        "licence": "derived from the MNI ICBM152 template (McConnell Brain Imaging Centre; see README.md)",
        "tensorImageSize": "3D",
        "spacing_mm": [template.spacing] * 3,
        "seed": seed,
        "modality": {str(i): c for i, c in enumerate(CONTRASTS)},
        "labels": {"0": "background", "1": "lesion"},
    }
    splits = (
        ("training", "train"),
        ("validation", "val"),
        ("test", "test"),
        ("ood", "ood"),
        ("validation_lesion", "val_lesion"),
    )
    for key, split in splits:
        datalist[key] = [e for e, job in zip(entries, jobs) if job[0] == split]
    atomic_write_text(out / "dataset.json", json.dumps(datalist, indent=2) + "\n")
    atomic_write_text(out / "README.md", _readme(template.spacing, datalist))
    return datalist


def _readme(spacing: float, datalist: dict[str, Any]) -> str:
    """The README of the brain set."""
    kinds = sorted({e["lesion_type"] for e in datalist["test"]})
    oods = ", ".join(f"`{e['ood_type']}`" for e in datalist["ood"])
    return f"""# medood demo data: brain_mri

Synthetic multi-contrast (T1w, T2w, FLAIR) brain MRI at {spacing:g} mm, built offline (no download) by
`medood data demo`. Deterministic per seed (seed {datalist["seed"]} here).

| folder | content |
|---|---|
| `train/` | {len(datalist["training"])} healthy subjects: `sub-XXX_{{T1w,T2w,FLAIR,brainmask}}.nii.gz` |
| `val/` | {len(datalist["validation"])} healthy subjects, same files |
| `test/` | {len(datalist["test"])} subjects, same files plus `sub-XXX_lesion.nii.gz` (uint8; all zero if healthy) |
| `ood/` | {len(datalist["ood"])} out-of-distribution volumes: {oods} |
| `val_lesion/` | {len(datalist["validation_lesion"])} lesioned twins of the `val/` subjects (same anatomy, \
lesions seeded apart from `test/`): a labelled **validation** set to choose settings without the test set |
| `dataset.json` | MONAI Decathlon-style datalist (`training`, `validation`, `test`, `ood`, \
`validation_lesion`; `image` = T1w) |

Test lesion types: {", ".join(f"`{k}`" for k in kinds)} (`none` = healthy, `is_anomalous` = 0).

## How it was made
* **Anatomy (real):** the MNI ICBM152 2009a nonlinear symmetric template and its grey/white-matter probability
  maps, as shipped in the nilearn wheel (`nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz`,
  1 mm, 197x233x189). Brain mask = template T1 > 0; CSF = mask - GM - WM. Resampled to 2 mm for `--size small`.
* **Subjects (synthetic):** a smooth random deformation (a few mm), a radial warp that enlarges or shrinks the
  ventricles, per-subject tissue-parameter jitter, then T1w (spin echo TR 500/TE 12 ms), T2w (TR 4000/TE 100 ms)
  and FLAIR (inversion recovery TR 9000/TE 120 ms, TI nulling CSF) signals from BrainWeb 1.5 T tissue
  T1/T2/PD values, mixed by tissue probability; then a smooth multiplicative bias field, gain and contrast (gamma)
  jitter and Rician noise. Skull-stripped: 0 outside the brain mask.
* **Lesions (synthetic, exact masks):** tumour (lobulated core, optional enhancing rim, oedema), MS-like
  periventricular white-matter plaques, and large/small lesions that are hyper- or hypo-intense on every contrast.
  Blended with soft edges; the mask is the lesion's partial-volume weight >= 0.5, always inside the brain mask
  (the soft border, weight < 0.5, reaches at most one voxel beyond the mask).
* **OOD (see `dataset.json` `description`):** wrong contrast in the T1w slot (PD-weighted, inverted), other voxel
  order (PIR) and anisotropic thick slices (valid affines), motion ghosting, heavy noise, and a real head CT slice
  from pydicom-data (`693_UNCI.dcm`) extruded to 3-D.

Images are int16 with scale factor 5e-4 (readers that apply `scl_slope`, e.g. nibabel/MONAI, give float
signal in units of the CSF equilibrium magnetisation times the gain); masks are uint8. Affines are RAS+ world mm
(MNI space, sform/qform code 4; the CT case uses code 1).

## Licences
The anatomy is derived from the MNI ICBM152 2009a nonlinear symmetric template (Collins et al. 1999; Fonov et
al., NeuroImage 47, S102, 2009; Fonov et al., NeuroImage 54(1), 2011), (C) Vladimir Fonov, Louis Collins and the
McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. The upstream MNI licence is
permissive (use, copy and redistribute with attribution and this notice, no warranty); nilearn (BSD-3), which
redistributes the files, lists the licence as "unknown", so keep this attribution with any copy. The CT slice
comes from pydicom-data (MIT). The synthetic content (deformations, contrasts, lesions) adds no restriction.
"""
