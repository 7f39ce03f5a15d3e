"""``medood evaluate`` on small CSVs and tiny NIfTI folders: exit codes, metrics.json content, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medood.cli import main
from medood.metrics import aupr_in, auroc, best_dice, dice_at_threshold, fpr_at_tpr, pixel_ap


def _write_csv(path: Path, header: str, rows: list[tuple]) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _scores(n: int = 12) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * (n // 2))
    return [f"case{i:02d}" for i in range(n)], np.round(rng.normal(size=n) + y, 3), y


def _error_text(caplog: pytest.LogCaptureFixture) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_scores_and_labels_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases, s, y = _scores()
    scores = _write_csv(tmp_path / "scores.csv", "case,score,is_ood", [(c, v, 1) for c, v in zip(cases, s)])
    labels = _write_csv(tmp_path / "labels.csv", "case,label", list(zip(cases[::-1], y[::-1])))
    out = tmp_path / "out" / "metrics.json"
    assert main(["evaluate", "--scores", str(scores), "--labels", str(labels), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    m = res["image"]["metrics"]
    assert m["auroc"] == pytest.approx(auroc(s, y))
    assert m["aupr_in"] == pytest.approx(aupr_in(s, y))
    assert m["fpr95"] == pytest.approx(fpr_at_tpr(s, y))
    assert m["fpr95"] == pytest.approx(fpr_at_tpr(s, y, positive="id")), "FPR95 = OOD accepted at 95 % ID TPR"
    assert m["fpr95_ood"] == pytest.approx(fpr_at_tpr(s, y, positive="ood"))
    assert (res["image"]["n_id"], res["image"]["n_ood"]) == (6, 6)
    assert "ID positive" in res["conventions"]["fpr95"]
    table = capsys.readouterr().out
    assert "auroc" in table
    assert f"{m['auroc']:.4f}" in table


def test_labels_inside_scores_csv(tmp_path: Path) -> None:
    cases, s, y = _scores()
    scores = _write_csv(tmp_path / "scores.csv", "case,score,label", list(zip(cases, s, y)))
    out = tmp_path / "m.json"
    assert main(["evaluate", "--scores", str(scores), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["image"]["metrics"]["auroc"] == pytest.approx(auroc(s, y))


@pytest.mark.parametrize(
    ("label_rows", "expect"),
    [
        ("missing", "no label for 2 of 12 scored cases: case10, case11"),
        ("extra", "no score for 1 labelled cases: ghost"),
        ("conflict", "labels disagree"),
        ("one_class", "all 12 cases are ID"),
    ],
)
def test_bad_labels_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture, label_rows: str, expect: str) -> None:
    cases, s, y = _scores()
    scores = _write_csv(tmp_path / "scores.csv", "case,score,label", list(zip(cases, s, y)))
    rows = list(zip(cases, y))
    if label_rows == "missing":
        rows = rows[:10]
    elif label_rows == "extra":
        rows.append(("ghost", 1))
    elif label_rows == "conflict":
        rows[0] = (cases[0], 1 - y[0])
    else:
        rows = [(c, 0) for c in cases]
        scores = _write_csv(tmp_path / "scores.csv", "case,score", list(zip(cases, s)))
    labels = _write_csv(tmp_path / "labels.csv", "case,label", rows)
    with caplog.at_level(logging.ERROR):
        assert main(["evaluate", "--scores", str(scores), "--labels", str(labels)]) == 2
    assert expect in _error_text(caplog)


def test_malformed_csv_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _write_csv(tmp_path / "scores.csv", "case,score,label", [("a", "high", 1), ("b", 0.2, 0)])
    with caplog.at_level(logging.ERROR):
        assert main(["evaluate", "--scores", str(bad)]) == 2
    assert f"{bad}: line 2: score 'high'" in _error_text(caplog)


def _nifti(path: Path, arr: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


def _volumes(tmp_path: Path, n: int = 3, shape=(10, 10, 6)) -> tuple[Path, Path, Path, list, list]:
    rng = np.random.default_rng(1)
    maps_dir, masks_dir, fg_dir = (tmp_path / d for d in ("maps", "masks", "fg"))
    for d in (maps_dir, masks_dir, fg_dir):
        d.mkdir()
    maps, masks = [], []
    suffixes = ["_lesion", "", "_seg"]
    for i in range(n):
        lesion = np.zeros(shape, dtype=np.uint8)
        lesion[2:5, 3:6, i : i + 2] = 1
        m = (rng.normal(size=shape) * 0.5 + lesion).astype(np.float32)
        _nifti(maps_dir / f"c{i}_anomaly_map.nii.gz", m)
        _nifti(maps_dir / f"c{i}_anomaly_seg.nii.gz", (m > 1).astype(np.uint8))  # writer output: ignored
        _nifti(masks_dir / f"c{i}{suffixes[i % 3]}.nii.gz", lesion)
        _nifti(fg_dir / f"c{i}_brainmask.nii.gz", np.pad(np.ones([d - 2 for d in shape], np.uint8), 1))
        maps.append(m)
        masks.append(lesion)
    return maps_dir, masks_dir, fg_dir, maps, masks


def test_maps_and_masks(tmp_path: Path) -> None:
    maps_dir, masks_dir, _, maps, masks = _volumes(tmp_path)
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--maps", str(maps_dir), "--masks", str(masks_dir), "--threshold", "0.8"]
    assert main([*argv, "--slice-axis", "-1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["voxel"]
    m = res["metrics"]
    assert res["n_cases"] == 3
    assert res["n_voxels"] == 3 * 600
    assert m["pixel_ap"] == pytest.approx(pixel_ap(maps, masks), abs=1e-9)
    assert m["best_dice"] == pytest.approx(best_dice(maps, masks).dice, abs=1e-9)
    assert m["dice"] == pytest.approx(dice_at_threshold(maps, masks, 0.8).pooled, abs=1e-9)
    assert m["best_dice"] >= m["dice"]
    assert 0.5 < m["slice_auroc"] <= 1.0
    assert 0.0 < m["slice_ap"] <= 1.0


def test_maps_with_foreground_and_sampling(tmp_path: Path) -> None:
    maps_dir, masks_dir, fg_dir, maps, masks = _volumes(tmp_path)
    fg = [np.pad(np.ones([d - 2 for d in m.shape]), 1) for m in maps]
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--maps", str(maps_dir), "--masks", str(masks_dir), "--foreground", str(fg_dir)]
    assert main([*argv, "--max-voxels", "200", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["voxel"]
    assert res["n_voxels"] == 3 * 200
    ref = pixel_ap(maps, masks, foreground=fg, max_voxels_per_case=200, seed=0)
    assert res["metrics"]["pixel_ap"] == pytest.approx(ref, abs=1e-9)


def test_shape_mismatch_names_both_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    maps_dir, masks_dir, _, _, _ = _volumes(tmp_path)
    _nifti(masks_dir / "c1.nii.gz", np.zeros((10, 10, 5), np.uint8))
    with caplog.at_level(logging.ERROR):
        assert main(["evaluate", "--maps", str(maps_dir), "--masks", str(masks_dir)]) == 2
    text = _error_text(caplog)
    assert str(maps_dir / "c1_anomaly_map.nii.gz") in text
    assert str(masks_dir / "c1.nii.gz") in text
    assert "(10, 10, 6)" in text
    assert "(10, 10, 5)" in text


def test_missing_mask_and_no_input(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    maps_dir, masks_dir, _, _, _ = _volumes(tmp_path)
    (masks_dir / "c2_seg.nii.gz").unlink()
    with caplog.at_level(logging.ERROR):
        assert main(["evaluate", "--maps", str(maps_dir), "--masks", str(masks_dir)]) == 2
        assert main(["evaluate"]) == 2
    text = _error_text(caplog)
    assert f"{masks_dir}: no lesion mask for 1 of 3 maps: c2" in text
    assert "nothing to evaluate" in text
