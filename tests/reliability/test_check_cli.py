"""``medood check PATH``: one line per unusable input naming the file, a summary line, exit status 1 if any."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medood.cli import main
from medood.data.check import check_dataset
from tests.reliability.corpus.dicom import write_series
from tests.reliability.corpus.images import png
from tests.reliability.corpus.nifti import vol, write_nifti, write_raw_nifti
from tests.reliability.corpus.npz import medmnist_arrays, npz

ROOT = Path(__file__).resolve().parents[2]


def _dataset(root: Path) -> dict[str, str]:
    """A mixed dataset folder; returns {bad file: the problem its line must mention}."""
    (root / "imagesTs").mkdir(parents=True)
    for i in range(3):
        write_nifti(root / "imagesTs" / f"ok{i}.nii.gz", vol(seed=i))
    write_nifti(root / "imagesTs" / "mask.nii.gz", np.zeros((12, 13, 14), np.float32))  # a healthy lesion mask
    entries = [{"image": f"imagesTs/ok{i}.nii.gz", "label": "imagesTs/mask.nii.gz"} for i in range(3)]
    (root / "dataset.json").write_text(json.dumps({"test": [*entries, {"image": "imagesTs/gone.nii.gz"}]}))
    raw = write_nifti(root / "imagesTs" / "cut.nii.gz").read_bytes()
    (root / "imagesTs" / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    write_nifti(root / "imagesTs" / "fmri.nii.gz", vol((8, 8, 8, 3)))
    write_raw_nifti(root / "imagesTs" / "flat.nii.gz", pixdim=(2.0, 0.0, 2.0), codes=(0, 0))
    write_nifti(root / os.fsdecode(b"caf\xe9.nii.gz"))
    os.symlink(root / "loop.nii.gz", root / "loop.nii.gz")
    write_series(root / "dicom" / "good", 3)
    os.symlink(root / "dicom", root / "dicom" / "good" / "up")  # a folder loop: walked once, no duplicate slices
    gap = write_series(root / "dicom" / "gap", positions=[0.0, 2.5, 7.5])
    png(root / "photos" / "a.png")
    raw = png(root / "photos" / "b.png").read_bytes()
    (root / "photos" / "b.png").write_bytes(raw[: len(raw) // 2])
    npz(root / "pathmnist.npz", **medmnist_arrays())
    arrays = medmnist_arrays()
    arrays["val_labels"] = arrays["val_labels"][:2]
    npz(root / "broken.npz", **arrays)
    (root / "configs").mkdir()
    (root / "configs" / "good.yaml").write_text("pixdim: [2, 2, 2]\n")
    (root / "configs" / "bad.yaml").write_text("pixdim: [2, 2\n")
    (root / "notes.txt").write_text("not checked")
    return {
        "dataset.json": "1 files listed under 'test' do not exist: ",
        "cut.nii.gz": "truncated gzip",
        "fmri.nii.gz": "4D with 3 volumes",
        "flat.nii.gz": "zero voxel spacing",
        "caf\\xe9.nii.gz": "not valid UTF-8",
        "loop.nii.gz": "symbolic link loop",
        str(gap[2].relative_to(root)): "missing slice",
        "b.png": "truncated or corrupt PNG",
        "broken.npz": "holds 6 images but val_labels holds 2",
        "bad.yaml": "not valid YAML",
    }


def test_check_names_every_unusable_file_once_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    expected = _dataset(tmp_path / "ds")
    assert main(["check", str(tmp_path / "ds")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    problems, summary = lines[:-1], lines[-1]
    assert len(problems) == len(expected), "\n".join(problems)
    for name, problem in expected.items():
        hits = [line for line in problems if f"{name}: " in line]
        assert len(hits) == 1 and problem in hits[0], (name, hits)
        assert hits[0].startswith("UNUSABLE ")
    assert not any(f"{good}: " in "\n".join(problems) for good in ("ok0.nii.gz", "mask.nii.gz", "a.png", "good.yaml"))
    assert summary == (
        "checked 2 .npz, 2 2D image, 2 DICOM series, 7 NIfTI, 2 config, 1 dataset.json: 10 unusable; "
        "1 other files not checked"
    )


def test_clean_folder_and_single_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "clean").mkdir()
    for i in range(2):
        write_nifti(tmp_path / "clean" / f"s{i}.nii.gz", vol(seed=i))
    assert main(["check", str(tmp_path / "clean")]) == 0
    assert capsys.readouterr().out == "checked 2 NIfTI: 0 unusable\n"
    fmri = write_nifti(tmp_path / "fmri.nii.gz", vol((8, 8, 8, 3)))
    assert main(["check", str(fmri)]) == 1
    assert main(["check", "--allow-4d", str(fmri)]) == 0
    assert main(["check", "--max-bytes", "1000", str(tmp_path / "clean" / "s0.nii.gz")]) == 1
    assert main(["check", str(tmp_path / "nowhere")]) == 1
    out = capsys.readouterr().out
    assert "fmri.nii.gz: is 4D" in out and "above the memory budget" in out and "nowhere: does not exist" in out


def test_empty_folder_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    report = check_dataset(tmp_path / "empty")
    assert not report.ok and report.problems == [f"{tmp_path / 'empty'}: holds no files to check"]


@pytest.mark.slow
def test_exit_status_of_the_console_command(tmp_path: Path) -> None:
    write_nifti(tmp_path / "ok.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume at all" * 30)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "medood.cli", "check", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 1
    assert run.stdout.splitlines() == [
        f"UNUSABLE {tmp_path / 'bad.nii.gz'}: wrong magic bytes: not a NIfTI file (unrecognised content)",
        "checked 2 NIfTI: 1 unusable",
    ]
