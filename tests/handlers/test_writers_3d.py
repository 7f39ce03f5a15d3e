"""A 3D NIfTI with a non-identity (LAS, anisotropic) affine goes through preprocessing, the OOD evaluator and
the result writer; the written map has the input's shape and affine; CSVs have the documented layout."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ResizeWithPadOrCropd,
    Spacingd,
)

from medood.detectors import get_detector
from medood.engines import OODEvaluator, fit_detector
from medood.handlers import CalibrationHandler, OODResultWriter
from medood.inferers import OODInferer
from medood.utils.reduce import reduce_slices

AFFINE = np.array([[-1.2, 0.0, 0.0, 50.0], [0.0, 1.0, 0.0, -30.0], [0.0, 0.0, 2.0, 10.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (20, 24, 10)


def _write_cases(folder, n=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.random(SHAPE).astype(np.float32)
        p = folder / f"case{i}.nii.gz"
        nib.save(nib.Nifti1Image(arr, AFFINE), str(p))
        paths.append(str(p))
    return paths


def _pipeline(paths, det, writer_or_handler, extra_handlers=()):
    pre = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", "RAS"),
            Spacingd("image", (2.0, 2.0, 2.0)),
            ResizeWithPadOrCropd("image", (16, 16, 16)),
            NormalizeIntensityd("image", nonzero=True),
        ]
    )
    post = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)
    loader = DataLoader(Dataset([{"image": p} for p in paths], pre), batch_size=2)
    return OODEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=det,
        inferer=OODInferer(roi_size=(8, 8, 8), sw_batch_size=2, slice_axes=(0, 2)),
        postprocessing=post,
        val_handlers=[writer_or_handler, *extra_handlers],
    )


@pytest.fixture(scope="module")
def trained_ae():
    torch.manual_seed(0)
    det = get_detector("ae", spatial_dims=3, channels=(4, 8), strides=(2, 2), epochs=2)
    det.fit([torch.rand(2, 1, 8, 8, 8)], trainer=fit_detector)
    return det.eval()


def test_map_has_input_grid_and_csvs(tmp_path, trained_ae):
    paths = _write_cases(tmp_path, 3)
    calib = CalibrationHandler(trained_ae, foreground="all", save_path=tmp_path / "models" / "model.pt")
    _pipeline(paths, trained_ae, calib).run()
    found = trained_ae.calibration.thresholds(99.0, 40.0)
    thr, score_thr = found.map, found.score
    assert thr is not None and np.isfinite(thr)
    assert score_thr is not None and np.isfinite(score_thr)
    assert (tmp_path / "models" / "model.pt").exists()

    out = tmp_path / "out"
    writer = OODResultWriter(out, calibration=trained_ae.calibration, map_percentile=99.0, score_percentile=40.0)
    _pipeline(paths, trained_ae, writer).run()

    for i in range(3):
        img = nib.load(str(out / f"case{i}_anomaly_map.nii.gz"))
        assert img.shape == SHAPE
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
        assert img.get_data_dtype() == np.float32
        src = nib.load(str(paths[i]))  # the map and the mask keep the input's qform / sform codes (1 if unset)
        assert int(img.header["qform_code"]) == (int(src.header["qform_code"]) or 1)
        assert int(img.header["sform_code"]) == (int(src.header["sform_code"]) or 1)
        seg = nib.load(str(out / f"case{i}_anomaly_seg.nii.gz"))
        assert int(seg.header["sform_code"]) == int(img.header["sform_code"])
        assert seg.get_data_dtype() == np.uint8
        assert seg.shape == SHAPE
        np.testing.assert_allclose(seg.affine, AFFINE, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
        np.testing.assert_array_equal(np.asarray(seg.dataobj), (np.asarray(img.dataobj) >= thr).astype(np.uint8))

    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["case"] for r in rows] == ["case0", "case1", "case2"]
    assert list(rows[0]) == ["case", "score", "flagged", "image"]  # medood.io.run_folder's layout
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    assert all(np.isfinite(float(r["score"])) for r in rows)
    # flagged = score above the split-conformal threshold for alpha = 0.6 of the same three (calibration) cases:
    # the k = ceil((3 + 1) * 0.4) = 2nd smallest (itself not flagged: "> threshold"), so exactly the top one
    scores = [float(r["score"]) for r in rows]
    assert [int(r["flagged"]) for r in rows] == [int(s == max(scores)) for s in scores]
    assert sorted(scores)[1] == pytest.approx(score_thr, rel=1e-6)
    assert json.loads((out / "thresholds.json").read_text())["score_threshold"] == pytest.approx(score_thr)

    srows = list(csv.DictReader(open(out / "slice_scores.csv")))
    assert list(srows[0]) == ["case", "axis", "slice", "score"]
    per_axis = {(c, a): 0 for c in ("case0", "case1", "case2") for a in ("0", "2")}
    for r in srows:
        per_axis[(r["case"], r["axis"])] += 1
    assert all(per_axis[(c, "0")] == SHAPE[0] and per_axis[(c, "2")] == SHAPE[2] for c in ("case0", "case1", "case2"))
    assert len(srows) == 3 * (SHAPE[0] + SHAPE[2])
    # the slice scores are the inferer's reduction of the written map, along the file's voxel axes
    written = torch.from_numpy(np.asarray(nib.load(str(out / "case1_anomaly_map.nii.gz")).dataobj))[None, None]
    for axis in (0, 2):
        expect = reduce_slices(written, axis, "topk", 0.01)[0]
        got = [float(r["score"]) for r in srows if r["case"] == "case1" and r["axis"] == str(axis)]
        np.testing.assert_allclose(got, expect.numpy(), rtol=1e-5, atol=1e-6)


def test_no_overwrite_keeps_existing_outputs(tmp_path, trained_ae):
    paths = _write_cases(tmp_path, 1)
    out = tmp_path / "out"
    _pipeline(paths, trained_ae, OODResultWriter(out)).run()
    before = (out / "case0_anomaly_map.nii.gz").read_bytes()
    resumed = OODResultWriter(out, overwrite=False, run_mode="resume")
    _pipeline(paths, trained_ae, resumed).run()  # case0 is complete: kept, never inferred nor written again
    assert [r["case"] for r in resumed.rows] == ["case0"]
    manifest = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**manifest, "cases": []}))  # case0 no longer recorded complete
    with pytest.raises(FileExistsError, match="overwrite=False"):  # a resumed run of the same settings
        _pipeline(paths, trained_ae, OODResultWriter(out, overwrite=False, run_mode="resume")).run()
    assert (out / "case0_anomaly_map.nii.gz").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]
