"""Class-folder, ISIC 2019 and HAM10000 datalists; the OOD-folder datalists of post-hoc evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medood.data import DataError
from medood.data.folders import (
    class_folder_datalist,
    evaluation_datalist,
    ham10000_datalist,
    isic2019_datalist,
    ood_datalists,
    scoring_datalist,
)
from tests.helpers.class_folders import make_class_folders, write_pngs

ISIC_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff")  # the datalists check existence only
    return path


def _kvasir(root: Path, split: str | None = "train") -> Path:
    base = root / split if split else root
    for cls, names in {
        "polyps": ["b.jpg", "a.JPG"],
        "dyed-lifted-polyps": ["x.png"],
        "normal-z-line": ["z.tif"],
    }.items():
        for n in names:
            _touch(base / cls / n)
    _touch(base / "polyps" / ".hidden.jpg")
    (base / "polyps" / "notes.txt").write_text("ignored")
    return root


def test_class_folders_with_split(tmp_path: Path) -> None:
    datalist, classes = class_folder_datalist(_kvasir(tmp_path / "kvasir"), split="train")
    assert classes == ["dyed-lifted-polyps", "normal-z-line", "polyps"]
    assert [(Path(d["image"]).name, d["label"]) for d in datalist] == [
        ("x.png", 0),
        ("z.tif", 1),
        ("a.JPG", 2),
        ("b.jpg", 2),
    ]


def test_class_folders_without_split_and_given_order(tmp_path: Path) -> None:
    root = _kvasir(tmp_path / "gv", split=None)
    datalist, classes = class_folder_datalist(root, class_names=["polyps", "normal-z-line"])
    assert classes == ["polyps", "normal-z-line"]
    assert sorted({d["label"] for d in datalist}) == [0, 1]
    assert len(datalist) == 3


def test_class_folder_errors(tmp_path: Path) -> None:
    root = _kvasir(tmp_path / "kv")
    with pytest.raises(DataError, match=r"kv: has no split folder 'test' \(available: \['train'\]\)"):
        class_folder_datalist(root, split="test")
    with pytest.raises(DataError, match=r"kv: holds split folders \['train'\], not class folders"):
        class_folder_datalist(root)
    (root / "train" / "empty-class").mkdir()
    with pytest.raises(DataError, match=r"empty-class: class folder 'empty-class' contains no images"):
        class_folder_datalist(root, split="train")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"nothing: is an empty dataset folder"):
        class_folder_datalist(tmp_path / "nothing")
    with pytest.raises(DataError, match=r"has no folder for classes \['ulcer'\]"):
        class_folder_datalist(root, split="train", class_names=["ulcer"])


def _isic(tmp: Path, rows: list[str], images: list[str] | None = None) -> tuple[Path, Path]:
    img_dir = tmp / "ISIC_2019_Training_Input"
    img_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        name = row.split(",")[0]
        if images is None or name in images:
            _touch(img_dir / f"{name}.jpg")
    csv = tmp / "ISIC_2019_Training_GroundTruth.csv"
    csv.write_text("\n".join([ISIC_HEADER, *rows]) + "\n")
    return img_dir, csv


ROWS = [
    "ISIC_0000000,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
    "ISIC_0000001,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
    "ISIC_0000002,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0",
]


def test_isic2019_drops_empty_unk(tmp_path: Path) -> None:
    img_dir, csv = _isic(tmp_path, ROWS)
    datalist, classes = isic2019_datalist(img_dir, csv)
    assert classes == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert [d["label"] for d in datalist] == [1, 0, 7]
    assert Path(datalist[2]["image"]).name == "ISIC_0000002.jpg"


def test_isic2019_missing_images_are_named(tmp_path: Path) -> None:
    img_dir, csv = _isic(tmp_path, ROWS, images=["ISIC_0000001"])
    with pytest.raises(
        DataError, match=r"2 of 3 images listed in the CSV are missing: ISIC_0000000\.jpg, ISIC_0000002"
    ):
        isic2019_datalist(img_dir, csv)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("ISIC_0000009,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", r"row 5 \(ISIC_0000009\) has no positive class"),
        ("ISIC_0000009,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", r"row 5 .*has 2 positive classes \['MEL', 'NV'\]"),
    ],
)
def test_isic2019_rows_need_exactly_one_positive(tmp_path: Path, row: str, problem: str) -> None:
    img_dir, csv = _isic(tmp_path, [*ROWS, row])
    with pytest.raises(DataError, match=rf"GroundTruth\.csv: {problem}"):
        isic2019_datalist(img_dir, csv)


def test_isic2019_csv_without_image_column(tmp_path: Path) -> None:
    img_dir, _ = _isic(tmp_path, ROWS)
    bad = tmp_path / "meta.csv"
    bad.write_text("image_id,age\nISIC_0000000,40\n")
    with pytest.raises(DataError, match=r"meta\.csv: has no 'image' column"):
        isic2019_datalist(img_dir, bad)


def test_ham10000_two_image_folders(tmp_path: Path) -> None:
    _touch(tmp_path / "part_1" / "ISIC_0027419.jpg")
    _touch(tmp_path / "part_2" / "ISIC_0025030.jpg")
    meta = tmp_path / "HAM10000_metadata.csv"
    meta.write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp\n"
        "HAM_0000118,ISIC_0025030,nv,histo,80.0,male,scalp\n"
    )
    datalist, classes = ham10000_datalist([tmp_path / "part_1", tmp_path / "part_2"], meta)
    assert classes == ["bkl", "nv"]
    assert [(Path(d["image"]).parent.name, d["label"], d["lesion_id"]) for d in datalist] == [
        ("part_1", 0, "HAM_0000118"),
        ("part_2", 1, "HAM_0000118"),
    ]
    with pytest.raises(DataError, match=r"part_1: 1 of 2 images listed in the CSV are missing: ISIC_0025030\.jpg"):
        ham10000_datalist(tmp_path / "part_1", meta)


def test_ood_datalists_sets_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_pngs(tmp_path / "near" / "dye", 2, (0, 0, 200), rng)
    write_pngs(tmp_path / "near" / "tool" / "deep", 1, (9, 9, 9), rng)
    write_pngs(tmp_path / "flat", 2, (9, 9, 9), rng)
    sets = ood_datalists([tmp_path / "near", tmp_path / "flat"])
    assert {k: len(v) for k, v in sets.items()} == {"near/dye": 2, "near/tool": 1, "flat": 2}
    assert sets["near/tool"][0]["case"] == "near/tool/deep/img_00"
    assert all(e["is_ood"] == 1 for v in sets.values() for e in v)
    (tmp_path / "empty" / "kind").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty/kind: contains no images"):
        ood_datalists([tmp_path / "empty"])
    with pytest.raises(DataError, match=r"nowhere: OOD folder does not exist"):
        ood_datalists([tmp_path / "nowhere"])


def test_evaluation_and_scoring_datalists(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", n_train=1, n_eval=2)
    data = evaluation_datalist(root, [root / "ood_near", root / "ood_far"], "test")
    ids = [d for d in data if d["is_ood"] == 0]
    assert len(ids) == 6
    assert ids[0]["case"] == "id/normal_mucosa/img_00"
    assert {d["label"] for d in ids} == {0, 1, 2}
    oods = [d for d in data if d["is_ood"] == 1]
    assert {d["ood_set"] for d in oods} == {"ood_near/blue_dye", "ood_near/instrument", "ood_far/grey", "ood_far/xray"}
    assert all(d["label"] == -1 for d in oods)
    with pytest.raises(DataError, match="no OOD folders"):
        evaluation_datalist(root, [], "test")
    assert [d["case"] for d in scoring_datalist(root, "val")][:2] == ["normal_mucosa/img_00", "normal_mucosa/img_01"]
    assert len(scoring_datalist(root / "ood_far", "test")) == 6, "no split folder: every image under the root"
