"""``scripts/benchmark.py --data DIR``: every documented real layout, written tiny here, gives the expected sets."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medood.benchmark.real import (
    brain_manifest,
    class_folder_manifest,
    dermoscopy_manifest,
    medmnist_manifest,
    real_manifest,
)
from medood.data.errors import DataError

DETECTOR_KEYS = {"auroc", "auroc_ci", "fpr95", "fpr95_ci", "aupr_in", "aupr_out", "flagged_id_rate", "alpha"}


def _count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _sizes(m: dict) -> dict[str, int]:
    return {k: s["n"] for k, s in m["sets"].items() if s["role"] in ("id_val", "id_test", "ood_test")}


def _npz(path: Path, sizes: dict[str, int], n_classes: int, rgb: bool = True, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {}
    for split, n in sizes.items():
        labels = np.arange(n) % n_classes
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        images = rng.integers(0, 60, shape, dtype=np.uint8) + (labels * 60).astype(np.uint8).reshape(
            -1, 1, 1, *([1] if rgb else [])
        )
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)


def _pathology(root: Path) -> Path:
    folder = root / "pathology"
    folder.mkdir(parents=True)
    _npz(folder / "pathmnist.npz", {"train": 24, "val": 12, "test": 12}, 3)
    _npz(folder / "chestmnist.npz", {"test": 7}, 1, rgb=False, seed=1)
    return folder


def test_pathmnist_npz_layout(tmp_path: Path) -> None:
    folder = _pathology(tmp_path)
    m = medmnist_manifest(folder, tmp_path / "out", "pathology")
    assert m["classes"] == ["class_0", "class_1", "class_2"] and m["real"] and m["host"] == "train"
    assert _sizes(m) == {"id_val": 12, "id_test": 12, "chestmnist": 7}
    assert m["sets"]["chestmnist"]["family"].startswith("far")
    assert _count(Path(m["train_dir"]) / "train") == 24 and _count(Path(m["train_dir"]) / "train" / "class_1") == 8
    val_ood = {k for k, s in m["sets"].items() if s["role"] == "ood_val"}
    assert val_ood and not val_ood & {k for k, s in m["sets"].items() if s["role"] == "ood_test"}
    assert m["sets"]["noise_s3"]["n"] == 12  # shifted ID test images
    again = real_manifest(folder, tmp_path / "out")  # reused: same source, same quick
    assert again["sets"] == m["sets"]


def test_quick_caps_subsample_seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medood.benchmark import real

    folder = _pathology(tmp_path)
    for key, n in (("train", 5), ("val", 2), ("test", 10), ("ood", 4)):
        monkeypatch.setitem(real.QUICK_CAPS, key, n)
    m = medmnist_manifest(folder, tmp_path / "a", "pathology")
    assert _sizes(m) == {"id_val": 6, "id_test": 10, "chestmnist": 4}
    assert _count(Path(m["train_dir"]) / "train") == 15
    full = medmnist_manifest(folder, tmp_path / "b", "pathology", quick=False)
    assert _sizes(full) == {"id_val": 12, "id_test": 12, "chestmnist": 7}
    again = medmnist_manifest(folder, tmp_path / "c", "pathology")
    names = {p.name for p in (Path(m["train_dir"]) / "test").rglob("*.png")}
    assert names == {p.name for p in (Path(again["train_dir"]) / "test").rglob("*.png")}  # seeded


def _isic(root: Path, ham: bool = False) -> Path:
    folder = root / "dermoscopy"
    images = folder / ("HAM10000_images_part_1" if ham else "ISIC_2019_Training_Input")
    images.mkdir(parents=True)
    counts = {"MEL": 10, "NV": 10, "DF": 6, "VASC": 6}
    rows: list[tuple[str, str, str]] = []
    for c, n in counts.items():
        for i in range(n):
            name = f"ISIC_{c}_{i:03d}"
            Image.fromarray(np.full((16, 16, 3), 40 * len(rows) % 255, np.uint8)).save(images / f"{name}.jpg")
            rows.append((name, c, f"lesion_{c}_{i // 2}"))  # two images per lesion
    if ham:
        with (folder / "HAM10000_metadata.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["lesion_id", "image_id", "dx"])
            w.writerows((les, name, c.lower()) for name, c, les in rows)
        return folder
    columns = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    with (folder / "ISIC_2019_Training_GroundTruth.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *columns])
        w.writerows([name, *(1.0 if k == c else 0.0 for k in columns)] for name, c, _ in rows)
    (folder / "ISIC_2019_Test_Input").mkdir()  # the test release beside it is never read (no labels for us)
    (folder / "ISIC_2019_Test_GroundTruth.csv").write_text("image,MEL,NV\nISIC_9999999,1.0,0.0\n")
    with (folder / "ISIC_2019_Training_Metadata.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "age_approx", "lesion_id"])
        w.writerows((name, 50, les) for name, _, les in rows)
    return folder


@pytest.mark.parametrize("ham", [False, True], ids=["isic2019", "ham10000"])
def test_dermoscopy_unseen_class_protocol(tmp_path: Path, ham: bool) -> None:
    folder = _isic(tmp_path, ham)
    for sub in ("normal", "hemorrhage"):  # the same file name twice in one OOD set: two cases
        (folder / "ood_far" / "headct" / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "ood_far" / "headct" / sub / "ct0.png")
    m = dermoscopy_manifest(folder, tmp_path / "out")
    unseen = ("df", "vasc") if ham else ("DF", "VASC")
    assert m["classes"] == (["mel", "nv"] if ham else ["MEL", "NV"])  # held-out classes are never trained on
    assert _sizes(m) == {"id_val": 4, "id_test": 4, f"unseen_{unseen[1]}": 6, f"unseen_{unseen[0]}": 6, "headct": 2}
    assert m["sets"][f"unseen_{unseen[0]}"]["family"] == "near (unseen class)"
    assert m["sets"]["headct"]["family"] == "far"
    if not ham:  # MECAM's protocol: every class ID, far-OOD folders only
        (folder / "held_out.txt").write_text("")
        mecam = real_manifest(folder, tmp_path / "out_mecam")
        assert mecam["classes"] == ["MEL", "NV", "DF", "VASC"] and set(_sizes(mecam)) == {"id_val", "id_test", "headct"}
    train = Path(m["train_dir"])
    split_of = {p.name: p.parts[-3] for p in train.rglob("*.jpg") if p.parts[-3] in ("train", "val", "test")}
    assert len(split_of) == 20
    for c in ("MEL", "NV"):  # both images of a lesion fall in the same split
        for i in range(5):
            assert split_of[f"ISIC_{c}_{2 * i:03d}.jpg"] == split_of[f"ISIC_{c}_{2 * i + 1:03d}.jpg"]


def test_kvasir_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "endoscopy" / "kvasir-dataset-v2"
    counts = {"normal-cecum": 10, "normal-pylorus": 10, "normal-z-line": 10, "polyps": 20, "esophagitis": 5}
    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((12, 12, 3), i, np.uint8)).save(root / c / f"{c}_{i}.jpg")
    m = class_folder_manifest(tmp_path / "endoscopy", tmp_path / "out")
    assert m["classes"] == ["normal-cecum", "normal-pylorus", "normal-z-line"]
    assert _sizes(m) == {"id_val": 3, "id_test": 6, "unseen_polyps": 20, "unseen_rare": 5}
    assert _count(Path(m["train_dir"]) / "train") == 21
    (tmp_path / "endoscopy" / "id_classes.txt").write_text("polyps\nnormal-cecum\n")
    other = real_manifest(tmp_path / "endoscopy", tmp_path / "out2")
    assert other["classes"] == ["polyps", "normal-cecum"] and "unseen_normal-pylorus" not in other["sets"]
    with pytest.raises(DataError, match="no class folder"):
        class_folder_manifest(tmp_path / "endoscopy", tmp_path / "out3", id_classes=["ulcer"])


def _nii(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def _brain(root: Path, decathlon: bool = False) -> Path:
    folder = root / "brain_mri"
    rng = np.random.default_rng(0)
    for s in range(4):
        for c in ("T1", "T2") + (("PD",) if s < 2 else ()):
            _nii(folder / f"IXI-{c}" / f"IXI{s:03d}-Guys-0{s}-{c}.nii.gz", rng.random((8, 8, 6)).astype(np.float32))
    seg = np.zeros((8, 8, 6), np.uint8)
    seg[2:4, 2:5, 1:3] = 1
    seg[4, 4, 4] = 4
    if decathlon:
        task = folder / "Task01_BrainTumour"
        _nii(task / "imagesTr" / "BRATS_001.nii.gz", rng.random((8, 8, 6, 4)).astype(np.float32))
        _nii(task / "labelsTr" / "BRATS_001.nii.gz", seg)
        pair = {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
        meta = {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, "training": [pair]}
        (task / "dataset.json").write_text(json.dumps(meta))
        return folder
    for k in range(2):
        case = folder / "MICCAI_BraTS2020_TrainingData" / f"BraTS20_Training_{k:03d}"
        for seq in ("t1", "t1ce", "t2", "flair"):
            _nii(case / f"{case.name}_{seq}.nii.gz", rng.random((8, 8, 6)).astype(np.float32))
        _nii(case / f"{case.name}_seg.nii.gz", seg)
    return folder


@pytest.mark.parametrize("decathlon", [False, True], ids=["per_sequence", "decathlon_4d"])
def test_ixi_and_brats(tmp_path: Path, decathlon: bool) -> None:
    m = brain_manifest(_brain(tmp_path, decathlon), tmp_path / "out")
    n_cases = 1 if decathlon else 2
    assert _sizes(m) == {"id_val": 4, "id_test": 4, "brats_lesioned": 2 * n_cases, "ixi_pd": 2}
    root = Path(m["sets"]["id_test"]["dir"]).parent
    assert sorted(p.name.split("_")[-1] for p in (root / "id_val").iterdir()) == ["T1w.nii.gz", "T1w.nii.gz",
                                                                              "T2w.nii.gz", "T2w.nii.gz"]  # fmt: skip
    masks = sorted((root / m["segmentation"]["masks"]).iterdir())
    assert len(masks) == n_cases and len(list((root / "seg_test").iterdir())) == n_cases
    mask = np.asarray(nib.load(str(masks[0])).dataobj)  # type: ignore[attr-defined]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1} and mask.sum() == 13  # seg > 0: labels 1 and 4
    assert len(list((root / "seg_val").iterdir())) == 2  # healthy T1 of the validation subjects
    if decathlon:  # the 4-D volume split by the dataset.json modality names
        t1 = nib.load(str(root / "seg_test" / "BRATS_001_T1w.nii.gz")).shape  # type: ignore[attr-defined]
        assert t1 == (8, 8, 6)


def test_layouts_it_cannot_read_are_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "pathology").mkdir()
    (tmp_path / "dermoscopy").mkdir()
    with pytest.raises(DataError, match=r"pathology: holds no pathmnist\*\.npz") as e:
        real_manifest(tmp_path / "pathology", tmp_path / "o1")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="GroundTruth"):
        real_manifest(tmp_path / "dermoscopy", tmp_path / "o2")
    with pytest.raises(DataError, match="does not exist"):
        real_manifest(tmp_path / "endoscopy", tmp_path / "o3")
    only_ixi = _brain(tmp_path / "b")
    for p in only_ixi.rglob("*_seg.nii.gz"):
        p.unlink()
    with pytest.raises(DataError, match="holds no BraTS case"):
        real_manifest(only_ixi, tmp_path / "o4")
    lone = tmp_path / "p2" / "pathology"
    lone.mkdir(parents=True)
    _npz(lone / "pathmnist.npz", {"train": 6, "val": 6, "test": 6}, 3)
    with pytest.raises(DataError, match="has no test OOD set"):
        real_manifest(lone, tmp_path / "o5")


@pytest.mark.slow
def test_run_benchmark_on_a_tiny_pathmnist(tmp_path: Path) -> None:
    """End to end: ``--data`` with a PathMNIST-like ``.npz``: the page's schema, the post-hoc family only."""
    from medood.benchmark import run_benchmark

    _pathology(tmp_path / "data")
    payload = run_benchmark(tmp_path / "docs", tmp_path / "work", data=tmp_path / "data", only=["pathology"],
                            quick=True, alpha=0.1, epochs=1, bundles=False)  # fmt: skip
    saved = json.loads((tmp_path / "docs" / "results.json").read_text())
    res = saved["tasks"]["pathology"]
    assert saved["not_done"] == [] and res["n_id"] == 12 and set(res["sets"]) == {"chestmnist"}
    entry = res["sets"]["chestmnist"]
    assert entry["n"] == 7 and len(entry["detectors"]) >= 10
    for m in entry["detectors"].values():
        assert DETECTOR_KEYS <= set(m) and 0 <= m["auroc"] <= 1 and m["alpha"] == 0.1
    assert "layout" in saved["data"]["pathology"] and payload["tasks"]["pathology"]["n_id"] == 12
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "chestmnist" in page and "Real data, pathology: MedMNIST pathmnist.npz" in page
