"""``medood check`` and the loaders agree on every input of the reliability corpus: each bad kind the loader refuses
is reported by :func:`~medood.data.check.check_dataset` (run on the same file or folder), and each odd input the
loader accepts passes the check."""

from __future__ import annotations

from pathlib import Path

import pytest

from medood.data.check import check_dataset
from medood.utils.errors import DataError
from tests.reliability.corpus import ACCEPTED, KINDS, AcceptedKind, BadKind

#: Kinds that are no input ``medood check`` can be given: a loader's call, not a file (datalist builders on
#: folders, a list of files, a split name), or a folder of series one level down (a dataset root holds those).
NOT_FILES = {
    "datalist-missing_list_key", "datalist-bundle_path_outside_root", "datalist-bundle_empty_list",
    "datalist-folder_without_nifti", "datalist-class_folder_without_images", "dicom-mixed_series_in_folder",
    "dicom-folder_without_dicom", "dicom-png_in_file_list", "npz-unknown_split",
}  # fmt: skip


def _check(given: Path, read: object = None) -> list[str]:
    budget = getattr(read, "keywords", {}).get("max_bytes")  # the budget the loader was given
    return check_dataset(given, max_bytes=budget).problems


@pytest.mark.parametrize("kind", [k for k in KINDS if k.id not in NOT_FILES], ids=lambda k: k.id)
def test_check_refuses_what_the_loader_refuses(kind: BadKind, tmp_path: Path) -> None:
    built = kind.build(tmp_path)
    given = built[0] if isinstance(built, tuple) else built
    with pytest.raises(DataError):
        kind.read(given)
    problems = _check(given, kind.read)
    assert problems, f"medood check passes {kind.id}, which {kind.read.__name__} refuses"  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ACCEPTED, ids=[k.name for k in ACCEPTED])
def test_check_accepts_what_the_loader_accepts(kind: AcceptedKind, tmp_path: Path) -> None:
    given = kind.build(tmp_path)
    kind.read(given)
    assert _check(given) == []


def test_check_reports_a_folder_of_two_series_as_the_loader_refuses_it(tmp_path: Path) -> None:
    from medood.data.dicom import load_dicom_series
    from tests.reliability.corpus.dicom import write_series

    folder = tmp_path / "scan"
    write_series(folder, 3)
    for f in write_series(tmp_path / "other", 3):
        f.rename(folder / f"b_{f.name}")
    with pytest.raises(DataError, match="holds 2 DICOM series") as info:
        load_dicom_series(folder)
    problems = _check(folder)
    assert any(p == str(info.value) for p in problems), problems
