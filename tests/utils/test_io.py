"""``atomic_copy``: a file or a folder lands whole under its name, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

import medood.utils.io as mio


def test_atomic_copy_of_a_file_and_of_a_folder(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("abc")
    assert mio.atomic_copy(src, tmp_path / "out" / "b.txt").read_text() == "abc"
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "c.txt").write_text("c")
    dest = mio.atomic_copy(folder, tmp_path / "copy")
    assert (dest / "sub" / "c.txt").read_text() == "c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "copy", "folder", "out"]


def test_a_failed_folder_copy_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "c.txt").write_text("c")

    def boom(*_a: object, **_k: object) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(mio.shutil, "copytree", boom)
    with pytest.raises(OSError, match="disk full"):
        mio.atomic_copy(folder, tmp_path / "copy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
