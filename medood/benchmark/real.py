"""Real datasets for ``scripts/benchmark.py --data DIR``: each documented layout becomes a bench-style manifest.

One adapter per task folder ``DIR/<task folder>/`` (layouts of ``docs/datasets.md``), tried in this order:

=============  ==========================================  =====================================================
folder         layout read                                 ID train / val / test  ->  test OOD sets
=============  ==========================================  =====================================================
any            ``manifest.json`` (bench format)            as written
any (2-D)      ``train|val|test/<class>/`` (+ ``ood_near|  as the folders say; every ``ood_*/<kind>/`` a set
               ood_far/<kind>/``)
pathology      ``pathmnist*.npz`` (MedMNIST keys)          the file's own train / val / test splits (every
                                                           class) -> the test split of every **other** ``.npz``
                                                           beside it (far: ``dermamnist``, ``chestmnist``, ...)
dermoscopy     ISIC 2019 (``*GroundTruth*.csv`` + the      unseen-class protocol: VASC and DF held out (never
               ``*Input`` image folder; lesion groups      trained on), each one near-OOD set; the other
               from ``*Metadata*.csv`` when present) or    classes split 70 / 10 / 20 % by lesion (seeded)
               HAM10000 (``HAM10000_metadata.csv`` +
               image folders; ``vasc``, ``df`` held out);
               ``dermamnist*.npz`` as pathology
endoscopy      Kvasir-v2 / GastroVision class folders      Kvasir: ID = the 3 normal landmarks (normal-cecum,
               (``<class>/*.jpg``, directly or one         normal-pylorus, normal-z-line); GastroVision / other:
               folder down)                                the 11 largest classes (NERO's ID class counts: 3 and
                                                           11; its class lists are not published). Each other
                                                           class one near-OOD set (< 20 images: pooled into
                                                           ``unseen_rare``); ID split 70 / 10 / 20 % (seeded)
brain_mri      IXI (``IXI*-T1|T2|PD.nii[.gz]``, skull-     ID = IXI T1 and T2 (as ``T1w`` / ``T2w``), subjects
               stripped and registered) **and** BraTS      split 50 / 50 into validation / test; OOD
               2020/2021 case folders (``*_t1|t2|flair|    ``brats_lesioned`` (BraTS T1 and T2 of each case:
               seg.nii.gz``) or Decathlon                  the contrasts the ID sets hold) and ``ixi_pd`` (wrong
               ``Task01_BrainTumour`` (4-D + dataset.json) contrast); anomaly segmentation: BraTS T1 with
                                                           ``seg > 0`` as the lesion mask (maps thresholded by
                                                           the bundle's shipped healthy calibration)
=============  ==========================================  =====================================================

``DIR/endoscopy/id_classes.txt`` (one class a line) overrides the ID classes, ``DIR/dermoscopy/held_out.txt``
the held-out ones (MECAM's own protocol: an empty ``held_out.txt``, every ISIC class ID, and far-OOD folders).
In every 2-D layout, image folders ``ood_near/<kind>/`` and ``ood_far/<kind>/`` inside the task folder add test
OOD sets (e.g. MECAM's HeadCT, RSNA Pneumonia or iSUN as far-OOD); a layout with no OOD set is refused.

Choices are made on validation data only: the post-hoc host is trained here on the ID training split with its
checkpoint chosen on the ID validation split, flag thresholds come from the ID validation split, and the
validation OOD family (corruptions of ID validation images, :func:`~medood.data.demo.bench.add_derived_2d`) is
never a test kind. The test OOD kinds are only scored. The adapter materialises the sets under
``out`` (symbolic links to the user's images; PNGs for ``.npz`` images; binary lesion masks and split 4-D
volumes for BraTS) with a ``manifest.json`` naming the source, and reuses that folder on the next run.
``quick`` caps the sizes (seeded subsample): train 200 / validation 40 images per class, ID test 500, each OOD
set 300, brain 30 subjects per split and 30 BraTS cases; ``quick=False`` keeps everything.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medood.data._files import walk_files
from medood.data.datalist import decathlon_datalist, read_json_object
from medood.data.demo.bench import MANIFEST, add_derived_2d, read_manifest
from medood.data.errors import DataError
from medood.data.folders import ham10000_datalist, isic2019_datalist
from medood.data.image2d import IMAGE_2D_SUFFIXES
from medood.data.medmnist import MedMNISTDataset, validate_npz
from medood.data.readers import split_4d
from medood.utils.io import atomic_path, atomic_write_bytes, atomic_write_text

__all__ = [
    "brain_manifest",
    "class_folder_manifest",
    "dermoscopy_manifest",
    "manifest_from_folders",
    "medmnist_manifest",
    "real_manifest",
]

logger = logging.getLogger(__name__)

#: unseen-class protocol of the dermoscopy layouts: the classes held out as near-OOD (never trained on)
HELD_OUT_ISIC = ("VASC", "DF")
HELD_OUT_HAM = ("vasc", "df")
KVASIR_ID = ("normal-cecum", "normal-pylorus", "normal-z-line")
N_ID_CLASSES_OTHER = 11  # GastroVision in NERO
RARE = 20  # held-out classes with fewer images are pooled into one set
#: quick-mode caps (seeded subsample): per class (train, val), ID test, each OOD set, brain subjects per split
QUICK_CAPS = {"train": 200, "val": 40, "test": 500, "ood": 300, "brain": 30}
_FRACTIONS = (0.7, 0.1, 0.2)
_NEAR_UNSEEN = "near (unseen class)"
_FAR = "far (other modality / organ)"
_MEDMNIST_FLAG = {"pathology": "pathmnist", "dermoscopy": "dermamnist"}

Item = Path | Callable[[], np.ndarray]  # a file to link, or a reader of uint8 pixels to write as PNG


# ---------------------------------------------------------------------------------------------- shared
def manifest_from_folders(root: Path) -> dict[str, Any]:
    """A manifest of a real 2-D dataset already sorted into ``train|val|test/<class>/`` and ``ood_*/<kind>/``.

    ``val`` gives the thresholds, every OOD kind folder is a test set (``ood_near``: near, ``ood_far``: far).
    """
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    sets: dict[str, dict[str, Any]] = {
        "id_val": {"dir": str(root / "val"), "role": "id_val"},
        "id_test": {"dir": str(root / "test"), "role": "id_test"},
    }
    for kind, family in _ood_folders(root).items():
        sets[kind.name] = {"dir": str(kind), "role": "ood_test", "family": family}
    return {"task": root.name, "kind": "2d", "train_dir": str(root), "classes": classes, "sets": sets, "real": True,
            "host": "train", "source": str(root), "layout": "class folders (train/val/test)"}  # fmt: skip


def _ood_folders(root: Path) -> dict[Path, str]:
    out: dict[Path, str] = {}
    for folder, family in (("ood_near", "near"), ("ood_far", "far")):
        out.update({p: family for p in sorted((root / folder).glob("*")) if p.is_dir()})
    return out


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in walk_files(folder) if p.suffix.lower() in IMAGE_2D_SUFFIXES)


def _cap(items: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or len(items) <= n:
        return items
    keep = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(keep)]


def _split_groups(groups: Sequence[str], seed: int, fractions: Sequence[float] = _FRACTIONS) -> dict[str, str]:
    """Seeded split of groups (lesions, subjects, images) into ``train`` / ``val`` / ``test`` by ``fractions``."""
    unique = sorted(set(groups))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    n = len(order)
    names = ("train", "val", "test")[-len(fractions) :]
    counts = [max(1, round(f * n)) if n >= len(fractions) else 0 for f in fractions[1:]]
    bounds = np.cumsum([n - sum(counts), *counts])
    out, start = {}, 0
    for name, end in zip(names, bounds, strict=True):
        out.update({g: name for g in order[start:end]})
        start = int(end)
    return out


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``<stem>__<k><suffix>`` when its stem is already a case of the set (same file name elsewhere)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    new, k = stem, 1
    while new in used:
        new, k = f"{stem}__{k}", k + 1
    used.add(new)
    return new + suffix


def _place(item: Item, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(item, Path):
        with atomic_path(dst) as tmp:
            Image.fromarray(np.asarray(item())).save(tmp, format="PNG")
        return
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(Path(item).resolve(), dst)


def _reusable(out: Path, source: Path, quick: bool) -> dict[str, Any] | None:
    if (out / MANIFEST).is_file():
        m = json.loads((out / MANIFEST).read_text())
        if m.get("source") == str(source.resolve()) and m.get("quick") == quick:
            logger.info("real data %s: %s exists, kept", source, out / MANIFEST)
            return read_manifest(out)
    return None


def _finish(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    for s in manifest["sets"].values():
        files = walk_files(out / s["dir"]) if (out / s["dir"]).is_dir() else []
        s["n"] = sum(1 for p in files if p.suffix.lower() in (*IMAGE_2D_SUFFIXES, ".gz", ".nii"))
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    logger.info("real data %s -> %s: %s", manifest["source"], out,
                {k: s["n"] for k, s in manifest["sets"].items() if s["role"] != "shift"})  # fmt: skip
    return read_manifest(out)


def _write_2d(out: Path, task: str, source: Path, layout: str, protocol: str, classes: list[str],
              splits: dict[str, dict[str, list[tuple[str, Item]]]], ood: dict[str, tuple[str, list[tuple[str, Item]]]],
              quick: bool, seed: int) -> dict[str, Any]:  # fmt: skip
    """Write ``out/data/{train,val,test}/<class>/`` and ``out/data/ood/<kind>/``, the derived sets, the manifest.

    ``splits``: ``{split: {class: [(file name, item)]}}``; ``ood``: ``{kind: (family, [(file name, item)])}``.
    """
    if not ood:
        raise DataError(source, "has no test OOD set", "add ood_near/<kind>/ or ood_far/<kind>/ image folders"
                        " (or, for MedMNIST, another .npz beside the ID file)")  # fmt: skip
    caps = QUICK_CAPS if quick else dict.fromkeys(QUICK_CAPS)
    used: dict[str, set[str]] = {}  # case names (file stems) per set: the runner keys scores by them
    for split, by_class in splits.items():
        for c in classes:
            items = by_class.get(c, [])
            if not items:
                raise DataError(source, f"class {c!r} has no image in the {split} split", "give more images")
            if split == "test":
                continue
            for name, item in _cap(items, caps[split], seed):
                _place(item, out / "data" / split / c / _unique(name, used.setdefault(split, set())))
    test = [(c, n, it) for c in classes for n, it in splits["test"][c]]
    for c, name, item in _cap(test, caps["test"], seed):
        _place(item, out / "data" / "test" / c / _unique(name, used.setdefault("test", set())))
    sets: dict[str, dict[str, Any]] = {
        "id_val": {"dir": "data/val", "role": "id_val"},
        "id_test": {"dir": "data/test", "role": "id_test"},
    }
    for kind, (family, items) in ood.items():
        for name, item in _cap(items, caps["ood"], seed):
            _place(item, out / "data" / "ood" / kind / _unique(name, used.setdefault(kind, set())))
        sets[kind] = {"dir": f"data/ood/{kind}", "role": "ood_test", "family": family}
    n_test = sum(1 for _ in _images(out / "data" / "test"))
    add_derived_2d(out, sets, task, 60 if quick else n_test)
    return _finish(out, {"task": task, "kind": "2d", "train_dir": "data", "classes": classes, "sets": sets,
                         "real": True, "host": "train", "source": str(source.resolve()), "layout": layout,
                         "protocol": protocol, "seed": seed, "quick": quick})  # fmt: skip


def _extra_ood(folder: Path) -> dict[str, tuple[str, list[tuple[str, Item]]]]:
    """``ood_near|ood_far/<kind>/`` image folders inside a task folder."""
    out: dict[str, tuple[str, list[tuple[str, Item]]]] = {}
    for kind, family in _ood_folders(folder).items():
        images = _images(kind)
        if not images:
            raise DataError(kind, "OOD folder holds no images", f"expected files ending in {IMAGE_2D_SUFFIXES}")
        out[kind.name] = (family, [(p.name, p) for p in images])
    return out


def _by_split(items: Sequence[tuple[str, str, str, Item]], classes: Sequence[str], seed: int,
              ) -> dict[str, dict[str, list[tuple[str, Item]]]]:  # fmt: skip
    """``items`` = ``(class, group, file name, item)`` of the ID classes -> a stratified, grouped split."""
    splits: dict[str, dict[str, list[tuple[str, Item]]]] = {
        s: {c: [] for c in classes} for s in ("train", "val", "test")
    }
    for i, c in enumerate(classes):
        mine = [it for it in items if it[0] == c]
        where = _split_groups([g for _, g, _, _ in mine], seed + i)
        for _, g, name, item in mine:
            splits[where[g]][c].append((name, item))
    return splits


# ---------------------------------------------------------------------------------------------- MedMNIST
def _npz_item(ds: MedMNISTDataset, split: str, i: int) -> tuple[str, Item]:
    return f"{ds.stem}_{split}_{i:06d}.png", lambda: np.asarray(ds.images[i])


def medmnist_manifest(folder: Path, out: Path, task: str = "pathology", quick: bool = True,
                      seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """MedMNIST ``.npz``: the ID file (``pathmnist*`` / ``dermamnist*``) with its own splits; other ``.npz`` far-OOD.

    Raises:
        DataError: no ID ``.npz`` (or several), a multi-label ID file, or no OOD set.
    """
    flag = _MEDMNIST_FLAG[task]
    files = sorted(folder.glob("*.npz"))
    ids = [p for p in files if p.name.startswith(flag)]
    if len(ids) != 1:
        found = [p.name for p in files]
        raise DataError(folder, f"expected exactly one {flag}*.npz, found {len(ids)} (files: {found})",
                        "keep one size of the ID file in the folder")  # fmt: skip
    id_file = ids[0]
    validate_npz(id_file)
    cache = out / "npz_cache"  # compressed members decompressed once and memory-mapped: only the images kept are read
    splits: dict[str, dict[str, list[tuple[str, Item]]]] = {}
    n_classes = 0
    for split in ("train", "val", "test"):
        ds = MedMNISTDataset(id_file, split, cache_dir=cache)
        if ds.multi_label:
            raise DataError(id_file, "is multi-label", "the benchmark needs one class per image")
        n_classes = max(n_classes, ds.num_classes)
        splits[split] = {}
        for i in range(len(ds)):
            splits[split].setdefault(f"class_{int(ds.labels[i, 0])}", []).append(_npz_item(ds, split, i))
    classes = [f"class_{k}" for k in range(n_classes)]
    ood = _extra_ood(folder)
    for other in (p for p in files if p != id_file and not p.name.startswith(flag)):
        ds = MedMNISTDataset(other, "test", cache_dir=cache)
        ood[ds.stem] = (_FAR, [_npz_item(ds, "test", i) for i in range(len(ds))])
    protocol = (f"ID: every class of {id_file.name} (its train / val / test splits); test OOD: the test split of "
                "each other .npz and the ood_near|ood_far folders")  # fmt: skip
    return _write_2d(out, task, folder, f"MedMNIST {id_file.name}", protocol, classes, splits, ood, quick, seed)


# ---------------------------------------------------------------------------------------------- dermoscopy
def _first(folder: Path, pattern: str) -> Path | None:
    """The first match, training files first (ISIC also releases ``*_Test_*`` files, without the same images)."""
    found = sorted(folder.rglob(pattern), key=lambda p: ("train" not in p.name.lower(), str(p)))
    return found[0] if found else None


def dermoscopy_manifest(folder: Path, out: Path, quick: bool = True, seed: int = 0,
                        held_out: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """ISIC 2019 or HAM10000 (ISIC preferred when both are present) under the unseen-class protocol.

    Raises:
        DataError: neither ground-truth CSV found, the readers' errors (missing images, bad rows), a held-out
            class that does not exist, or no OOD set.
    """
    gt, ham = _first(folder, "*GroundTruth*.csv"), _first(folder, "HAM10000_metadata*.csv")
    groups: dict[str, str] = {}
    if gt is not None:
        image_dirs = [p for p in gt.parent.iterdir() if p.is_dir() and "input" in p.name.lower()]
        image_dirs = [p for p in image_dirs if "train" in p.name.lower()] or image_dirs
        if len(image_dirs) != 1:
            raise DataError(gt.parent, f"expected one *Input image folder beside {gt.name}, found {len(image_dirs)}")
        datalist, classes = isic2019_datalist(image_dirs[0], gt)
        meta = _first(gt.parent, "*Metadata*.csv")
        if meta is not None:
            with meta.open(newline="", encoding="utf-8-sig") as f:
                groups = {r["image"]: r.get("lesion_id") or r["image"] for r in csv.DictReader(f) if "image" in r}
        default, layout = HELD_OUT_ISIC, f"ISIC 2019 ({gt.name})"
    elif ham is not None:
        image_dirs = sorted(p for p in ham.parent.iterdir() if p.is_dir() and not p.name.startswith("ood_"))
        datalist, classes = ham10000_datalist(image_dirs, ham)
        groups = {d["case"]: d.get("lesion_id") or d["case"] for d in datalist}
        default, layout = HELD_OUT_HAM, f"HAM10000 ({ham.name})"
    else:
        raise DataError(folder, "holds no ISIC 2019 *GroundTruth*.csv, no HAM10000_metadata.csv, no dermamnist*.npz"
                        " and no train/ class folders", "see docs/datasets.md (Dermoscopy)")  # fmt: skip
    held = list(held_out if held_out is not None else default)
    unknown = [c for c in held if c not in classes]
    if unknown:
        raise DataError(gt or ham or folder, f"has no class {unknown} to hold out (classes: {classes})")
    items = [(classes[d["label"]], groups.get(d["case"], d["case"]), Path(d["image"]).name, Path(d["image"]))
             for d in datalist]  # fmt: skip
    present = {it[0] for it in items}
    id_classes = [c for c in classes if c not in held and c in present]  # a CSV column without images: left out
    ood = _extra_ood(folder)
    for c in (c for c in held if c in present):
        ood[f"unseen_{c}"] = (_NEAR_UNSEEN, [(name, it) for cls, _, name, it in items if cls == c])
    protocol = (f"unseen-class protocol: {held} held out (near-OOD, never trained on); ID classes {id_classes} split "
                f"70/10/20 % by {'lesion' if groups else 'image'} (seed {seed})")  # fmt: skip
    splits = _by_split([it for it in items if it[0] in id_classes], id_classes, seed)
    return _write_2d(out, "dermoscopy", folder, layout, protocol, id_classes, splits, ood, quick, seed)


# ---------------------------------------------------------------------------------------------- endoscopy
def _class_root(folder: Path) -> Path:
    subs = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith((".", "ood_"))]
    if any(_images_direct(p) for p in subs):
        return folder
    if len(subs) == 1:
        return _class_root(subs[0])
    raise DataError(
        folder, "holds no class folders of images", "expected <class>/<image>.jpg (Kvasir-v2, GastroVision)"
    )


def _images_direct(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_2D_SUFFIXES for p in folder.iterdir() if p.is_file())


def class_folder_manifest(folder: Path, out: Path, task: str = "endoscopy", quick: bool = True, seed: int = 0,
                          id_classes: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Kvasir-v2 / GastroVision ``<class>/`` folders: ID classes split 70 / 10 / 20 %, every other class near-OOD.

    Raises:
        DataError: no class folders, an unknown ID class, fewer than two classes, or no OOD set.
    """
    root = _class_root(folder)
    by_class = {p.name: _images(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    by_class = {c: v for c, v in by_class.items() if v and not c.startswith("ood_")}
    names = list(by_class)
    if len(names) < 2:
        raise DataError(root, f"has {len(names)} class folder(s) with images", "need ID classes and held-out ones")
    if id_classes is None:
        if set(KVASIR_ID) <= set(names):
            id_classes, rule = list(KVASIR_ID), "Kvasir-v2: the three normal anatomical landmarks"
        else:
            k = min(N_ID_CLASSES_OTHER, len(names) - 1)
            id_classes = sorted(sorted(names, key=lambda c: (-len(by_class[c]), c))[:k])
            rule = f"the {k} largest classes"
    else:
        rule = "given"
    unknown = [c for c in id_classes if c not in by_class]
    if unknown:
        raise DataError(root, f"has no class folder {unknown}", f"classes: {names}")
    ids = list(id_classes)
    ood = _extra_ood(folder)
    rare: list[tuple[str, Item]] = []
    for c in (c for c in names if c not in ids):
        items: list[tuple[str, Item]] = [(p.name, p) for p in by_class[c]]
        if len(items) < RARE:
            rare += items
        else:
            ood[f"unseen_{re.sub(r'[^A-Za-z0-9_-]+', '_', c)}"] = (_NEAR_UNSEEN, items)
    if rare:
        ood["unseen_rare"] = (_NEAR_UNSEEN + f", classes with < {RARE} images pooled", rare)
    items4 = [(c, str(p), p.name, p) for c in ids for p in by_class[c]]
    splits = _by_split(items4, ids, seed)
    protocol = f"ID classes ({rule}): {ids}, split 70/10/20 % (seed {seed}); every other class near-OOD"
    return _write_2d(out, task, folder, f"class folders ({root.name})", protocol, ids, splits, ood, quick, seed)


# ---------------------------------------------------------------------------------------------- brain
_IXI = re.compile(r"^(IXI\d+)-.*-(T1|T2|PD)\.nii(\.gz)?$")
_BRATS_SEG = re.compile(r"^(.+)_seg\.nii(\.gz)?$")
_CONTRAST = {"t1": "T1w", "t1w": "T1w", "t2": "T2w", "t2w": "T2w", "flair": "FLAIR", "pd": "PD"}


def _brats_cases(folder: Path, files: list[Path], staging: Path, cap: int | None = None,
                 seed: int = 0) -> dict[str, dict[str, Path]]:  # fmt: skip
    """``{case: {"T1w", "T2w", "seg": path}}`` from per-sequence folders or a Decathlon 4-D dataset.

    The 4-D volumes are split into ``staging`` (at most ``cap`` of them, seeded).
    """
    cases: dict[str, dict[str, Path]] = {}
    for seg in files:
        m = _BRATS_SEG.match(seg.name)
        if not m:
            continue
        seqs: dict[str, Path] = {"seg": seg}
        for p in seg.parent.iterdir():
            mm = re.match(rf"^{re.escape(m.group(1))}_([A-Za-z0-9]+)\.nii(\.gz)?$", p.name)
            if mm and _CONTRAST.get(mm.group(1).lower()) in ("T1w", "T2w"):
                seqs[_CONTRAST[mm.group(1).lower()]] = p
        if {"T1w", "T2w"} <= set(seqs):
            cases[m.group(1)] = seqs
    for js in (p for p in files if p.name == "dataset.json"):
        content = read_json_object(js)
        modality = content.get("modality")
        if not isinstance(modality, dict) or "training" not in content:
            continue
        names = [_CONTRAST.get(str(modality[k]).lower(), str(modality[k])) for k in sorted(modality, key=int)]
        if not {"T1w", "T2w"} <= set(names):
            raise DataError(js, f"modalities {names} lack T1w or T2w", "the brain bundles read T1w / T2w / FLAIR")
        for entry in _cap(decathlon_datalist(js, "training"), cap, seed):
            case = re.sub(r"\.nii(\.gz)?$", "", Path(entry["image"]).name)
            vols = split_4d(entry["image"], names)
            seqs = {}
            for c in ("T1w", "T2w"):
                seqs[c] = _save(staging / f"{case}_{c}.nii.gz", np.asarray(vols[c][0]), vols[c].affine)
            cases[case] = {**seqs, "seg": Path(entry["label"])}
    return cases


def _save(path: Path, data: np.ndarray, affine: Any, dtype: Any = np.float32) -> Path:
    import nibabel as nib

    image = nib.Nifti1Image(data.astype(dtype), np.asarray(affine, dtype=np.float64))
    return atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=1))


def _place_brats(case: str, files: dict[str, Path], out: Path) -> None:
    """A BraTS case: T1 / T2 into the OOD set, T1 into the segmentation set, ``seg > 0`` as its lesion mask."""
    import nibabel as nib

    for c in ("T1w", "T2w"):
        _place(files[c], out / "ood" / "brats_lesioned" / f"{case}_{c}.nii.gz")
    _place(files["T1w"], out / "seg_test" / f"{case}_T1w.nii.gz")
    seg: Any = nib.load(str(files["seg"]))
    _save(out / "seg_test_masks" / f"{case}_lesion.nii.gz", np.asarray(seg.dataobj) > 0, seg.affine, np.uint8)


def _ixi_subjects(files: list[Path]) -> dict[str, dict[str, Path]]:
    """``{subject: {"T1w" | "T2w" | "PD": path}}`` of the IXI files among ``files``."""
    ixi: dict[str, dict[str, Path]] = {}
    for p in files:
        m = _IXI.match(p.name)
        if m:
            ixi.setdefault(m.group(1), {})[_CONTRAST[m.group(2).lower()]] = p
    return ixi


def brain_manifest(folder: Path, out: Path, quick: bool = True, seed: int = 0) -> dict[str, Any]:
    """IXI (healthy T1 / T2: ID; PD: wrong contrast) and BraTS (lesioned: OOD and the segmentation set).

    Raises:
        DataError: no IXI T1 / T2 volume, or no complete BraTS case (T1, T2 and seg).
    """
    files = walk_files(folder)
    ixi = _ixi_subjects(files)
    healthy = sorted(s for s, c in ixi.items() if {"T1w", "T2w"} & set(c))
    if len(healthy) < 2:
        raise DataError(folder, f"holds {len(healthy)} IXI subject(s) with T1 / T2 (IXI*-T1|T2.nii.gz)",
                        "need >= 2 healthy subjects, skull-stripped, registered (docs/datasets.md, IXI)")  # fmt: skip
    cap = QUICK_CAPS["brain"] if quick else None
    brats = _brats_cases(folder, files, out / "brats_split", cap, seed)
    if not brats:
        raise DataError(folder, "holds no BraTS case (<case>_t1|t2|seg.nii.gz, or a Decathlon 4-D dataset.json)",
                        "see docs/datasets.md (BraTS)")  # fmt: skip
    where = _split_groups(healthy, seed, (0.5, 0.5))  # two-way: "val" -> id_val, "test" -> id_test
    for split in ("id_val", "id_test"):
        subjects = _cap([s for s in healthy if f"id_{where[s]}" == split], cap, seed)
        for s in subjects:
            for c in ("T1w", "T2w"):
                if c in ixi[s]:
                    _place(ixi[s][c], out / split / f"{s}_{c}.nii.gz")
            if split == "id_val" and "T1w" in ixi[s]:
                _place(ixi[s]["T1w"], out / "seg_val" / f"{s}_T1w.nii.gz")
    for case in _cap(sorted(brats), cap, seed):
        _place_brats(case, brats[case], out)
    sets: dict[str, dict[str, Any]] = {
        "id_val": {"dir": "id_val", "role": "id_val"},
        "id_test": {"dir": "id_test", "role": "id_test"},
        "brats_lesioned": {"dir": "ood/brats_lesioned", "role": "ood_test", "family": "near (pathology: glioma)"},
    }
    pd = _cap([s for s in sorted(ixi) if "PD" in ixi[s]], cap, seed)
    for s in pd:
        _place(ixi[s]["PD"], out / "ood" / "ixi_pd" / f"{s}_PD.nii.gz")
    if pd:
        sets["ixi_pd"] = {"dir": "ood/ixi_pd", "role": "ood_test", "family": "near (wrong contrast)"}
    seg = {"dir": "seg_test", "masks": "seg_test_masks", "role": "seg_test", "id_val": "seg_val", "contrast": "T1w"}
    protocol = (f"ID: IXI T1 / T2, subjects split 50/50 validation / test (seed {seed}); OOD: BraTS T1 / T2 "
                "(lesioned), IXI PD (wrong contrast); segmentation: BraTS T1 with seg > 0")  # fmt: skip
    return _finish(out, {"task": "brain_mri", "kind": "brain", "sets": sets, "segmentation": seg, "real": True,
                         "source": str(folder.resolve()), "layout": "IXI + BraTS NIfTI", "protocol": protocol,
                         "seed": seed, "quick": quick})  # fmt: skip


# ---------------------------------------------------------------------------------------------- dispatch
def _names(path: Path) -> list[str] | None:
    """Class names, one a line (``id_classes.txt`` / ``held_out.txt`` beside the data), or ``None``."""
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else None


def real_manifest(folder: Path, out: Path, quick: bool = True, seed: int = 0) -> dict[str, Any]:
    """The manifest of the real dataset in the task folder ``folder``, materialised under ``out``.

    ``folder`` is named ``pathology``, ``dermoscopy``, ``endoscopy`` or ``brain_mri``; ``out`` is reused when it
    was built from the same source with the same ``quick``.

    Raises:
        DataError: the folder is missing or its layout is none of the module docstring's (one line, naming the
            folder or file and what was expected).
    """
    if not folder.is_dir():
        raise DataError(folder, "does not exist", "expected DIR/<task folder>/ (see scripts/benchmark.py --help)")
    if (folder / MANIFEST).is_file():
        return read_manifest(folder)
    if (folder / "train").is_dir():
        return manifest_from_folders(folder)
    kept = _reusable(out, folder, quick)
    if kept is not None:
        return kept
    task = folder.name
    if task in _MEDMNIST_FLAG and any(folder.glob(f"{_MEDMNIST_FLAG[task]}*.npz")):
        return medmnist_manifest(folder, out, task, quick, seed)
    if task == "pathology":
        raise DataError(folder, "holds no pathmnist*.npz and no train/ class folders", "see docs/datasets.md")
    if task == "dermoscopy":
        return dermoscopy_manifest(folder, out, quick, seed, _names(folder / "held_out.txt"))
    if task == "endoscopy":
        return class_folder_manifest(folder, out, task, quick, seed, _names(folder / "id_classes.txt"))
    if task == "brain_mri":
        return brain_manifest(folder, out, quick, seed)
    raise DataError(folder, f"unknown task folder {task!r}", "expected pathology, dermoscopy, endoscopy or brain_mri")
