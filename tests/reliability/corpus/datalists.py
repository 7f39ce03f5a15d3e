"""Datalists (``decathlon_datalist``, ``bundle_datalist``, ``nifti_datalist``, ``class_folder_datalist``)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from medood.data.datalist import bundle_datalist, decathlon_datalist, nifti_datalist
from medood.data.folders import class_folder_datalist
from tests.reliability.corpus.images import png
from tests.reliability.corpus.nifti import write_nifti
from tests.reliability.corpus.registry import Built, bad


def dataset_json(root: Path, content: Any, images: tuple[str, ...] = ("a.nii.gz", "b.nii.gz")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in images:
        write_nifti(root / name)
    (root / "dataset.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return root / "dataset.json"


decathlon = partial(bad, "datalist", read=partial(decathlon_datalist, key="test"))


@decathlon("malformed_json", "not valid JSON: Expecting ',' delimiter at line 1")
def _(tmp: Path) -> Path:
    return dataset_json(tmp / "ds", '{"test": [{"image": "a.nii.gz"} {"image": "b.nii.gz"}]}')


@decathlon("json_not_an_object", "holds a JSON list")
def _(tmp: Path) -> Path:
    return dataset_json(tmp / "ds", [{"image": "a.nii.gz"}])


@decathlon("missing_list_key", "has no key 'test'.*list-valued keys: \\['training'\\]")
def _(tmp: Path) -> Path:
    return dataset_json(tmp / "ds", {"training": [{"image": "a.nii.gz"}]})


@decathlon("missing_files", "2 files listed under 'test' do not exist: .*gone1.nii.gz")
def _(tmp: Path) -> Path:
    return dataset_json(tmp / "ds", {"test": [{"image": "gone1.nii.gz"}, {"image": "gone2.nii.gz"}]})


@decathlon("path_outside_root", "points outside the dataset folder.*\\.\\./secret/x.nii.gz")
def _(tmp: Path) -> Path:
    (tmp / "secret").mkdir()
    write_nifti(tmp / "secret" / "x.nii.gz")
    return dataset_json(tmp / "ds", {"test": [{"image": "a.nii.gz"}, {"image": "../secret/x.nii.gz"}]})


@decathlon("absolute_path_elsewhere", "points outside the dataset folder")
def _(tmp: Path) -> Path:
    other = write_nifti(tmp / "elsewhere.nii.gz")
    return dataset_json(tmp / "ds", {"test": [{"image": str(other)}]})


@decathlon("duplicate_entry", "lists a.nii.gz twice under 'test' \\(entries 0 and 2\\)")
def _(tmp: Path) -> Path:
    return dataset_json(tmp / "ds", {"test": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}, {"image": "a.nii.gz"}]})


@decathlon("duplicate_case_id", "case id 'sub-1' twice")
def _(tmp: Path) -> Path:
    items = [{"image": "a.nii.gz", "case": "sub-1"}, {"image": "b.nii.gz", "case": "sub-1"}]
    return dataset_json(tmp / "ds", {"test": items})


@bad("datalist", "bundle_malformed_json", "not valid JSON", bundle_datalist)
def _(tmp: Path) -> Built:
    js = dataset_json(tmp / "ds", '{"test": [')
    return tmp / "ds", js


@bad("datalist", "bundle_path_outside_root", "points outside the dataset folder", bundle_datalist)
def _(tmp: Path) -> Built:
    write_nifti(tmp / "other.nii.gz")
    js = dataset_json(tmp / "ds", {"test": [{"T1w": "../other.nii.gz"}]})
    return tmp / "ds", js


@bad("datalist", "bundle_empty_list", "list 'test' is empty", bundle_datalist)
def _(tmp: Path) -> Built:
    js = dataset_json(tmp / "ds", {"test": []})
    return tmp / "ds", js


@bad("datalist", "empty_scan_folder", "is an empty folder", nifti_datalist)
def _(tmp: Path) -> Path:
    (tmp / "scans").mkdir()
    return tmp / "scans"


@bad("datalist", "folder_without_nifti", "contains no .nii or .nii.gz files", nifti_datalist)
def _(tmp: Path) -> Path:
    (tmp / "scans").mkdir()
    (tmp / "scans" / "notes.txt").write_text("x")
    return tmp / "scans"


@bad("datalist", "class_folder_without_images", "class folder 'polyp' contains no images", class_folder_datalist)
def _(tmp: Path) -> Built:
    png(tmp / "ds" / "normal" / "a.png")
    (tmp / "ds" / "polyp").mkdir()
    return tmp / "ds", tmp / "ds" / "polyp"
