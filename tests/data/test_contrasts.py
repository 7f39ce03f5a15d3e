"""Contrast-classification datalists from a dataset.json with one path per contrast (the demo brain layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medood.data.contrasts import contrast_datalist, contrast_evaluation_datalist, contrast_ood_datalist
from medood.utils.errors import DataError


def _dataset(root: Path) -> Path:
    lists: dict[str, list] = {"training": [], "test": [], "ood": []}
    for key, cases in (("training", ["s0", "s1"]), ("test", ["s2"]), ("ood", ["o0", "o1", "o2"])):
        (root / key).mkdir(parents=True)
        for case in cases:
            entry = {"case": case}
            for c in ("T1w", "T2w", "FLAIR"):
                (root / key / f"{case}_{c}.nii.gz").write_bytes(b"x")
                entry[c] = f"{key}/{case}_{c}.nii.gz"
            lists[key].append(entry)
    for entry, kind in zip(lists["ood"], ["pd", "noise", "reoriented"]):
        entry["ood_type"] = kind
    (root / "dataset.json").write_text(json.dumps(lists))
    return root


def test_one_item_per_contrast_labelled_by_index(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    items = contrast_datalist(root, "training")
    assert [(i["case"], i["label"]) for i in items] == [
        ("s0_T1w", 0), ("s0_T2w", 1), ("s0_FLAIR", 2), ("s1_T1w", 0), ("s1_T2w", 1), ("s1_FLAIR", 2),
    ]  # fmt: skip
    assert all(Path(i["image"]).is_absolute() and Path(i["image"]).is_file() for i in items)
    assert items[4]["image"].endswith("s1_T2w.nii.gz")
    two = contrast_datalist(root, "test", ("FLAIR", "T1w"), is_ood=0)
    assert [(i["contrast"], i["label"], i["is_ood"]) for i in two] == [("FLAIR", 0, 0), ("T1w", 1, 0)]


def test_ood_slots_and_skip(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    items = contrast_ood_datalist(root, slots={"pd": ["T1w"]}, skip=["reoriented"])
    assert [(i["ood_set"], i["contrast"]) for i in items] == [("pd", "T1w"), ("noise", "T1w"), ("noise", "T2w"),
                                                             ("noise", "FLAIR")]  # fmt: skip
    assert {(i["is_ood"], i["label"]) for i in items} == {(1, -1)}
    evaluation = contrast_evaluation_datalist(root, ood_slots={"pd": ["T1w"]}, skip=["reoriented"])
    assert [i["ood_set"] for i in evaluation[:3]] == ["id"] * 3
    assert len(evaluation) == 3 + 4


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset\.json"):
        contrast_datalist(tmp_path)
    root = _dataset(tmp_path / "d")
    with pytest.raises(DataError, match="no list 'validation'"):
        contrast_datalist(root, "validation")
    with pytest.raises(DataError, match="no 'PDw' path"):
        contrast_datalist(root, "test", ("PDw",))
    (root / "test" / "s2_T2w.nii.gz").unlink()
    with pytest.raises(DataError, match=r"s2_T2w\.nii\.gz.*does not exist"):
        contrast_datalist(root, "test")
    with pytest.raises(DataError, match="no OOD volume left"):
        contrast_ood_datalist(root, skip=["pd", "noise", "reoriented"])
