"""Benchmark sets: deterministic, large enough to tell detectors apart (``medood data bench``).

Per task a folder with a ``manifest.json`` naming every set, its role and its size:

* ``id_val``: in-distribution validation images (thresholds: the split-conformal rule needs ``n >= 1/alpha - 1``);
* ``id_fit`` (brain only): in-distribution volumes to fit feature detectors on (the brain bench has no training
  split), other subjects than ``id_val`` / ``id_test`` (their own seed stream);
* ``id_test``: in-distribution test images (>= 200 images; brain: >= 60 volumes);
* ``ood_test``: one set per OOD kind (>= 100 images; brain: >= 30 volumes), ``family`` ``near`` (acquisition
  shift, unseen class, artefact) or ``far`` (other modality / organ);
* ``ood_val``: a **validation** OOD family (corruptions of ID validation images that no test OOD kind uses), for
  any choice a method makes; never reported as a test set;
* ``shift``: ID test images under realistic acquisition shifts at three strengths (not OOD: the robustness table
  reports the fraction flagged).

The 2-D tasks (pathology, dermoscopy, endoscopy) reuse the demo generators (:mod:`.images2d`; real pixels of
scikit-image and pydicom-data where the demo uses them) with bench counts and another seed. The brain tasks reuse
:mod:`.brain_set` / :mod:`.ood`: healthy T1w / T2w / FLAIR volumes (every contrast file is a case), OOD kinds
``wrong_contrast_pd``, ``inverted_t1w`` (T1w slot only), ``anisotropic``, ``motion_ghosting``, ``heavy_noise``
and ``ct_head`` (the one real CT slice, varied by a seeded shift and gain). ``reoriented_pir`` is **never** OOD
here: preprocessing reorients every scan to RAS, so a reoriented healthy scan is in-distribution.
The anomaly-segmentation task gets lesioned T1w test volumes with their masks and healthy validation volumes.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medood.data.demo.brain import load_template, synthesize_subject
from medood.data.demo.brain_set import save_nifti
from medood.data.demo.images2d import get_spec, write_2d_set
from medood.data.demo.lesions import LESION_KINDS
from medood.data.demo.ood import make_brain_ood, ood_contrasts
from medood.data.demo.parallel import run_jobs
from medood.transforms.corruptions import Corrupt
from medood.utils.io import atomic_path, atomic_write_text

__all__ = ["BENCH_TASKS", "BRAIN_BENCH_OOD", "MANIFEST", "add_derived_2d", "brain_plan", "build_bench", "read_manifest"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BENCH_TASKS: tuple[str, ...] = (
    "brain_volume_ood", "brain_anomaly_segmentation", "pathology", "dermoscopy", "endoscopy",
)  # fmt: skip
#: brain OOD kinds of the benchmark and their family (``ID_AFTER_PREPROCESSING`` kinds of :mod:`.ood`, e.g.
#: ``reoriented_pir``, are excluded: reorientation is not OOD; :func:`brain_plan` drops them even if listed)
BRAIN_BENCH_OOD: dict[str, str] = {
    "wrong_contrast_pd": "near",
    "inverted_t1w": "near",
    "anisotropic": "near",
    "motion_ghosting": "near",
    "heavy_noise": "near",
    "ct_head": "far",
}
#: 2-D near-OOD kinds that are acquisition shifts / artefacts (the others are unseen classes)
_NEAR_FAMILY = {
    "stain_shift": "near (acquisition shift)", "defocus_blur": "near (acquisition shift)",
    "cell_microscopy": "near (unseen class)", "vascular_like": "near (unseen class)",
    "blue_nevus_like": "near (unseen class)", "ruler_ink": "near (artefact)", "instrument": "near (artefact)",
    "dyed_lifted_polyp": "near (unseen class)", "debris": "near (artefact)",
}  # fmt: skip
#: validation OOD family (corruptions no test OOD kind uses) and robustness shifts with three strengths
VAL_OOD_2D, VAL_OOD_BRAIN = ("shuffle", "spike"), ("shuffle", "gibbs")
SHIFTS_2D: dict[str, list[dict[str, Any]]] = {
    "noise": [{"std": 0.02}, {"std": 0.05}, {"std": 0.1}],
    "blur": [{"sigma": (0.5, 0.5)}, {"sigma": (1.0, 1.0)}, {"sigma": (1.5, 1.5)}],
    "contrast": [{"gamma": 1.2}, {"gamma": 1.5}, {"gamma": 2.0}],
    "jpeg": [{"quality": 75}, {"quality": 40}, {"quality": 15}],
    # stain / colour: H, E, DAB densities scaled by 1 - s or 1 + 2 s and shifted by up to the offset
    "colour": [{"scale": 0.05, "offset": 0.02}, {"scale": 0.15, "offset": 0.05}, {"scale": 0.3, "offset": 0.1}],
}
SHIFTS_BRAIN: dict[str, list[dict[str, Any]]] = {
    "noise": [{"std": 0.01}, {"std": 0.03}, {"std": 0.06}],
    "bias": [{"strength": 0.1}, {"strength": 0.25}, {"strength": 0.5}],
    "motion": [{"fraction": 0.05, "shift": 0.02}, {"fraction": 0.1, "shift": 0.04}, {"fraction": 0.2, "shift": 0.06}],
    "contrast": [{"gamma": 1.2}, {"gamma": 1.5}, {"gamma": 2.0}],
    "resolution": [{"sigma": (0.5, 0.5)}, {"sigma": (0.8, 0.8)}, {"sigma": (1.2, 1.2)}],
}
_SHIFT_CORRUPTION = {"colour": "stain", "resolution": "blur"}


def read_manifest(task_dir: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a bench task folder (set paths made absolute)."""
    root = Path(task_dir)
    manifest = json.loads((root / MANIFEST).read_text())
    for s in manifest["sets"].values():
        s["dir"] = str(root / s["dir"])
    if manifest.get("train_dir"):
        manifest["train_dir"] = str(root / manifest["train_dir"])
    return manifest


# ---------------------------------------------------------------------------------------------- 2-D
def _corrupt_png(src: Path, dst: Path, name: str, seed: int, option: dict[str, Any] | None) -> None:
    import torch

    rgb = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32) / 255.0
    if name == "jpeg":
        with atomic_path(dst) as tmp:
            quality = int((option or {}).get("quality", 75))
            Image.fromarray((rgb * 255).round().astype(np.uint8)).save(tmp, format="JPEG", quality=quality)
        return
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    corruption = _SHIFT_CORRUPTION.get(name, name)
    fixed = {k: (v, v) if isinstance(v, float) and k in ("std", "gamma", "strength", "scale") else v
             for k, v in (option or {}).items()}  # fmt: skip
    out = Corrupt({corruption: fixed} if fixed else None)(x, corruption, seed)
    arr = (out.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    with atomic_path(dst) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def _derived_2d(job: tuple[str, str, str, dict[str, Any] | None, int, str]) -> int:
    src_dir, dst_dir, name, option, n, _ = job
    for i, src in enumerate(_images(Path(src_dir))[:n]):
        suffix = ".jpg" if name == "jpeg" else ".png"
        _corrupt_png(src, Path(dst_dir) / f"{src.stem}{suffix}", name, 1000 + i, option)
    return n


def _build_2d(task: str, root: Path, seed: int, quick: bool, workers: int | None) -> dict[str, Any]:

    spec = get_spec(task)
    kinds = max(len(spec.ood_near), len(spec.ood_far))
    n_test = 70  # per class: >= 200 ID test images with 3 classes
    write_2d_set(task, root / "data", seed, n_train=60, n_val=30, n_test=n_test, n_ood=100 * kinds, workers=workers)
    sets: dict[str, dict[str, Any]] = {
        "id_val": {"dir": "data/val", "role": "id_val"},
        "id_test": {"dir": "data/test", "role": "id_test"},
    }
    for folder, fam in (("ood_near", "near"), ("ood_far", "far (other modality / organ)")):
        for kind in getattr(spec, folder):
            family = _NEAR_FAMILY.get(kind, fam) if fam == "near" else fam
            sets[kind] = {"dir": f"data/{folder}/{kind}", "role": "ood_test", "family": family}
    add_derived_2d(root, sets, task, 60 if quick else 3 * n_test, workers)
    return {"task": task, "kind": "2d", "train_dir": "data", "classes": list(spec.classes), "sets": sets}


def add_derived_2d(root: Path, sets: dict[str, dict[str, Any]], task: str, n_shift: int,
                   workers: int | None = None) -> None:  # fmt: skip
    """Write the validation OOD family (of ``root/data/val``) and the shifted ID test images (of ``root/data/test``).

    Adds their entries to ``sets`` (``dir`` relative to ``root``): ``val_<corruption>`` (role ``ood_val``, 100
    images) and ``<shift>_s<k>`` (role ``shift``, ``n_shift`` images each).
    """
    jobs: list[tuple[str, str, str, dict[str, Any] | None, int, str]] = []
    for name in VAL_OOD_2D:
        sets[f"val_{name}"] = {"dir": f"val_ood/{name}", "role": "ood_val", "family": "validation (corruption)"}
        jobs.append((str(root / "data/val"), str(root / f"val_ood/{name}"), name, None, 100, "ood_val"))
    for name, levels in SHIFTS_2D.items():
        if name == "colour" and task != "pathology":
            levels = [{"scale": lv["scale"], "offset": lv["offset"] / 2} for lv in levels]
        for k, option in enumerate(levels, 1):
            sets[f"{name}_s{k}"] = {"dir": f"shift/{name}_s{k}", "role": "shift", "shift": name, "strength": k}
            jobs.append((str(root / "data/test"), str(root / f"shift/{name}_s{k}"), name, option, n_shift, "shift"))
    run_jobs(_derived_2d, jobs, workers)


# ---------------------------------------------------------------------------------------------- brain
def _brain_job(root: Path, seed: int, job: tuple[str, int, str, tuple[str, ...]]) -> list[str]:
    """Write one subject's volumes into ``root/<folder>``; ``job`` = (folder, index, kind, contrasts)."""
    import torch

    folder, index, kind, contrasts = job
    template = load_template("small")
    sub_seed = (seed, 7, _code(folder), index)
    written = []
    if folder.startswith("ood/"):
        subject, _ = make_brain_ood(kind, template, sub_seed)
        if kind == "ct_head":  # one real slice: vary each volume by a seeded shift and gain
            rng = np.random.default_rng(list(sub_seed))
            shift = rng.integers(-4, 5, size=2)
            gain = float(rng.uniform(0.9, 1.1))
            subject.images = {c: np.roll(v, tuple(shift), axis=(0, 1)) * gain for c, v in subject.images.items()}
    elif folder == "seg_test":
        subject = synthesize_subject(template, sub_seed, kind)
    else:
        subject = synthesize_subject(template, sub_seed, None)
    code = 1 if kind == "ct_head" else 4
    out = root / folder
    for c in contrasts:
        volume = subject.images[c]
        if ":" in kind:  # shift or validation corruption: "<corruption>:<json options>"
            name, options = kind.split(":", 1)
            opts = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(options).items()}
            opts = {k: (v, v) if isinstance(v, float) and k in ("std", "gamma", "strength") else v
                    for k, v in opts.items()}  # fmt: skip
            corruption = _SHIFT_CORRUPTION.get(name, name)
            scale = float(np.percentile(volume[volume > 0], 99)) or 1.0
            x = torch.from_numpy(volume[None] / scale)
            y = Corrupt({corruption: opts} if opts else None, mask_background=True)(x, corruption, index)[0]
            volume = np.clip(y.numpy(), 0, None) * scale
        rel = f"{folder}/sub-{index:03d}_{c}.nii.gz"
        save_nifti(root / rel, volume, subject.affine, kind="hu" if kind == "ct_head" else "image", code=code)
        written.append(rel)
    if folder == "seg_test":
        rel = f"{folder}_masks/sub-{index:03d}_lesion.nii.gz"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_nifti(root / rel, subject.lesion, subject.affine, kind="mask", code=code)
    out.mkdir(parents=True, exist_ok=True)
    return written


def _code(folder: str) -> int:
    return sum((i + 1) * ord(ch) for i, ch in enumerate(folder)) % 100_000


BrainJob = tuple[str, int, str, tuple[str, ...]]


def brain_plan(quick: bool = False) -> tuple[list[BrainJob], dict[str, dict[str, Any]]]:
    """The brain bench: every subject to write ``(folder, index, kind, contrasts)`` and the sets of the manifest."""
    all3 = ("T1w", "T2w", "FLAIR")
    jobs: list[BrainJob] = []
    jobs += [("id_val", i, "none", all3) for i in range(20)]  # 60 volumes
    jobs += [("id_test", i, "none", all3) for i in range(20)]  # 60 volumes
    jobs += [("id_fit", i, "none", all3) for i in range(20)]  # 60 volumes: seeds (seed, 7, code of "id_fit", i)
    sets: dict[str, dict[str, Any]] = {
        "id_val": {"dir": "id_val", "role": "id_val"},
        "id_test": {"dir": "id_test", "role": "id_test"},
        "id_fit": {"dir": "id_fit", "role": "id_fit"},
    }
    for kind, family in BRAIN_BENCH_OOD.items():
        slots = ood_contrasts(kind, all3)  # the one definition of what is OOD after preprocessing
        if not slots:
            continue
        jobs += [(f"ood/{kind}", i, kind, slots) for i in range(30 if len(slots) == 1 else 10)]
        sets[kind] = {"dir": f"ood/{kind}", "role": "ood_test", "family": family}
    for name in VAL_OOD_BRAIN:
        jobs += [(f"val_ood/{name}", i, f"{name}:{{}}", all3) for i in range(10)]
        sets[f"val_{name}"] = {"dir": f"val_ood/{name}", "role": "ood_val", "family": "validation (corruption)"}
    n_shift = 2 if quick else 20
    for name, levels in SHIFTS_BRAIN.items():
        for k, option in enumerate(levels, 1):
            jobs += [(f"shift/{name}_s{k}", i, f"{name}:{json.dumps(option)}", all3) for i in range(n_shift)]
            sets[f"{name}_s{k}"] = {"dir": f"shift/{name}_s{k}", "role": "shift", "shift": name, "strength": k}
    n_seg = 60
    jobs += [("seg_test", i, LESION_KINDS[i % len(LESION_KINDS)], ("T1w",)) for i in range(n_seg)]
    jobs += [("seg_val", i, "none", ("T1w",)) for i in range(20)]  # healthy T1w: the map threshold
    return jobs, sets


def _build_brain(root: Path, seed: int, quick: bool, workers: int | None) -> dict[str, Any]:

    jobs, sets = brain_plan(quick)
    load_template("small")
    run_jobs(functools.partial(_brain_job, root, seed), jobs, workers)
    seg = {
        "dir": "seg_test", "masks": "seg_test_masks", "role": "seg_test", "id_val": "seg_val", "contrast": "T1w",
    }  # fmt: skip
    return {"task": "brain_mri", "kind": "brain", "sets": sets, "segmentation": seg}


def _count(root: Path, s: dict[str, Any]) -> None:
    files = (root / s["dir"]).rglob("*")
    s["n"] = sum(1 for p in files if p.is_file() and p.suffix in (".png", ".jpg", ".gz"))


def _add_missing_brain_sets(root: Path, workers: int | None) -> None:
    """Write the sets of :func:`brain_plan` that an existing brain manifest lacks (e.g. ``id_fit``, added later).

    Each subject's seed depends on its folder and index only, so the sets written here are those a fresh build
    writes, and no existing file changes.
    """
    manifest = json.loads((root / MANIFEST).read_text())
    jobs, sets = brain_plan(bool(manifest.get("quick")))
    missing = {k: v for k, v in sets.items() if k not in manifest["sets"]}
    if not missing:
        return
    dirs = {v["dir"] for v in missing.values()}
    run_jobs(functools.partial(_brain_job, root, int(manifest["seed"])), [j for j in jobs if j[0] in dirs], workers)
    for k, v in missing.items():
        _count(root, v)
        manifest["sets"][k] = v
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    logger.info("bench brain_mri: added %s to %s", ", ".join(missing), root / MANIFEST)


def build_bench(
    out: str | Path,
    only: list[str] | None = None,
    seed: int = 2026,
    quick: bool = False,
    workers: int | None = None,
) -> dict[str, Path]:
    """Write the benchmark sets under ``out``: ``out/<task>/`` (the brain tasks share ``out/brain_mri/``).

    Args:
        out: output folder.
        only: tasks (of :data:`BENCH_TASKS`); default all.
        seed: base seed (the demo data uses 0; the bench sets another, so shipped weights never saw them).
        quick: fewer robustness-shift images (the ID / OOD test sets keep their sizes).
        workers: worker processes.

    Returns:
        ``{task folder name: path}``.
    """
    tasks = list(only or BENCH_TASKS)
    unknown = sorted(set(tasks) - set(BENCH_TASKS))
    if unknown:
        raise ValueError(f"unknown bench task(s) {unknown}; expected some of {list(BENCH_TASKS)}")
    written: dict[str, Path] = {}
    folders = list(dict.fromkeys("brain_mri" if t.startswith("brain") else t for t in tasks))
    for name in folders:
        root = Path(out) / name
        if (root / MANIFEST).is_file():
            logger.info("bench %s: %s exists, kept", name, root / MANIFEST)
            if name == "brain_mri":
                _add_missing_brain_sets(root, workers)
            written[name] = root
            continue
        start = time.perf_counter()
        manifest = (
            _build_brain(root, seed, quick, workers)
            if name == "brain_mri"
            else _build_2d(name, root, seed, quick, workers)
        )
        for s in manifest["sets"].values():
            _count(root, s)
        manifest.update(seed=seed, quick=quick, seconds=round(time.perf_counter() - start, 1))
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        logger.info("bench %s written to %s in %.0f s", name, root, manifest["seconds"])
        written[name] = root
    return written
