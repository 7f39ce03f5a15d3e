"""NIfTI folder, BIDS and Decathlon dataset.json datalists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medood.data import DataError
from medood.data.datalist import bids_datalist, decathlon_datalist, nifti_datalist


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_nifti_datalist_recursive_sorted_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    _touch(root / "b" / "case2.nii.gz")
    _touch(root / "a" / "case1.nii")
    _touch(root / "a" / "._case1.nii.gz")  # macOS resource fork: skipped
    _touch(root / "a" / "notes.txt")
    _touch(tmp_path / "elsewhere" / "linked.nii.gz")
    os.symlink(tmp_path / "elsewhere", root / "link")
    os.symlink(root, root / "b" / "loop")  # a cycle must not hang or duplicate
    names = [Path(d["image"]).relative_to(root).as_posix() for d in nifti_datalist(root)]
    assert names == ["a/case1.nii", "b/case2.nii.gz", "link/linked.nii.gz"]


def test_nifti_datalist_errors(tmp_path: Path) -> None:
    _touch(tmp_path / "pngs" / "x.png")
    with pytest.raises(DataError, match=r"pngs: contains no \.nii or \.nii\.gz files"):
        nifti_datalist(tmp_path / "pngs")
    with pytest.raises(DataError, match=r"absent: does not exist"):
        nifti_datalist(tmp_path / "absent")


def test_bids_with_and_without_sessions(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _touch(root / "dataset_description.json")
    _touch(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    _touch(root / "sub-02" / "anat" / "sub-02_T2w.nii.gz")
    _touch(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_run-1_T1w.nii")
    _touch(root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz")
    _touch(root / "derivatives" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    items = bids_datalist(root)
    assert [(i["subject"], i["session"], Path(i["image"]).name) for i in items] == [
        ("sub-01", "ses-1", "sub-01_ses-1_T1w.nii.gz"),
        ("sub-01", "ses-2", "sub-01_ses-2_run-1_T1w.nii"),
        ("sub-02", None, "sub-02_T1w.nii.gz"),
    ]
    assert [Path(i["image"]).name for i in bids_datalist(root, suffix="T2w")] == ["sub-02_T2w.nii.gz"]


def test_bids_errors(tmp_path: Path) -> None:
    _touch(tmp_path / "notbids" / "scan.nii.gz")
    with pytest.raises(DataError, match=r"notbids: contains no sub-\* folders"):
        bids_datalist(tmp_path / "notbids")
    _touch(tmp_path / "ds" / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    with pytest.raises(DataError, match=r"ds: has 1 sub-\* folders but no anat/\*_T1w"):
        bids_datalist(tmp_path / "ds")


def _decathlon(root: Path, training: list[dict], **extra: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    content = {"name": "BrainTumour", "numTraining": len(training), "training": training, **extra}
    path = root / "dataset.json"
    path.write_text(json.dumps(content))
    return path


def test_decathlon_resolves_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "Task01_BrainTumour"
    _touch(root / "imagesTr" / "BRATS_001.nii.gz")
    _touch(root / "labelsTr" / "BRATS_001.nii.gz")
    _touch(root / "imagesTs" / "BRATS_485.nii.gz")
    path = _decathlon(
        root,
        [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
        test=["./imagesTs/BRATS_485.nii.gz"],
    )
    training = decathlon_datalist(path)
    assert Path(training[0]["image"]) == (root / "imagesTr" / "BRATS_001.nii.gz").resolve()
    assert Path(training[0]["label"]).is_file()
    test = decathlon_datalist(path, key="test")
    assert Path(test[0]["image"]).name == "BRATS_485.nii.gz"


def test_decathlon_errors(tmp_path: Path) -> None:
    root = tmp_path / "Task"
    _touch(root / "imagesTr" / "a.nii.gz")
    items = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ("a", "b")]
    path = _decathlon(root, items)
    with pytest.raises(DataError, match=r"dataset\.json: has no key 'validation' \(list-valued keys: \['training'\]\)"):
        decathlon_datalist(path, key="validation")
    with pytest.raises(DataError, match=r"dataset\.json: 3 files listed under 'training' do not exist: .*labelsTr/a"):
        decathlon_datalist(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"dataset\.json: is not valid JSON"):
        decathlon_datalist(path)
