"""The Slicer scene script, executed against a fake ``slicer`` module that records every call."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medood.cli import main
from medood.reports import write_slicer_scene
from medood.reports.slicer import COLOR_NODE, check_map
from medood.utils.errors import DataError
from tests.helpers.run_folder import AFFINE, make_run_2d, make_run_3d


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []


class _Display:
    def __init__(self, rec: _Recorder, node: str) -> None:
        self.rec, self.node = rec, node

    def __getattr__(self, name: str):
        return lambda *a: self.rec.calls.append((self.node, name, *a))


class _Segment:
    def __init__(self) -> None:
        self.name, self.color = "1", None

    def SetName(self, name: str) -> None:
        self.name = name

    def SetColor(self, *rgb: float) -> None:
        self.color = rgb


class _Segmentation:
    def __init__(self, n: int) -> None:
        self.segments = [_Segment() for _ in range(n)]

    def GetNumberOfSegments(self) -> int:
        return len(self.segments)

    def GetNthSegment(self, i: int) -> _Segment:
        return self.segments[i]

    def AddEmptySegment(self, seg_id: str, name: str, color: list[float]) -> None:
        s = _Segment()
        s.SetName(name)
        self.segments.append(s)


def _fake_slicer(rec: _Recorder, segmentations: list[_Segmentation]) -> types.ModuleType:
    slicer = types.ModuleType("slicer")
    util = types.SimpleNamespace()

    def load_volume(path: str, properties: dict | None = None):
        assert Path(path).is_file(), path
        rec.calls.append(("loadVolume", path, dict(properties or {})))
        node = types.SimpleNamespace(path=path, GetDisplayNode=lambda: _Display(rec, Path(path).name))
        return node

    def load_segmentation(path: str, properties: dict | None = None):
        assert Path(path).is_file(), path
        rec.calls.append(("loadSegmentation", path))
        seg = _Segmentation(int(np.asarray(nib.load(path).dataobj).any()))
        segmentations.append(seg)
        display = _Display(rec, Path(path).name)
        return types.SimpleNamespace(GetSegmentation=lambda: seg, GetDisplayNode=lambda: display)

    def set_layers(background=None, foreground=None, foregroundOpacity=None):
        rec.calls.append(("layers", getattr(background, "path", None), foreground.path, foregroundOpacity))

    util.loadVolume, util.loadSegmentation, util.setSliceViewerLayers = load_volume, load_segmentation, set_layers
    util.getFirstNodeByName = lambda name: next(
        (types.SimpleNamespace(path=c[1]) for c in rec.calls if c[0] == "loadVolume" and c[2].get("name") == name), None
    )
    slicer.util = util
    return slicer


def _run_script(path: Path, browse: bool = True) -> tuple[_Recorder, list[_Segmentation]]:
    """Run the scene; with ``browse`` step through every case (the scene opens on the first one alone)."""
    rec, segs = _Recorder(), []
    saved = sys.modules.get("slicer")
    sys.modules["slicer"] = _fake_slicer(rec, segs)
    try:
        space: dict = {"__name__": "__main__"}
        exec(compile(path.read_text(), str(path), "exec"), space)
        for _ in range(len(space["CASES"]) - 1 if browse else 0):
            space["next_case"]()
    finally:
        if saved is None:
            sys.modules.pop("slicer")
        else:
            sys.modules["slicer"] = saved
    return rec, segs


def test_scene_3d_loads_every_case_with_fixed_window_and_named_segments(tmp_path) -> None:
    run = make_run_3d(tmp_path)
    script = write_slicer_scene(run, images_dir=tmp_path / "inputs")
    assert script == run.resolve() / "open_in_slicer.py"
    rec, segs = _run_script(script)
    volumes = [c for c in rec.calls if c[0] == "loadVolume"]
    maps = [c for c in volumes if c[1].endswith("_anomaly_map.nii.gz")]
    images = [c for c in volumes if c[1].endswith("_T1w.nii.gz")]
    assert len(maps) == 3 and len(images) == 3
    assert all(c[2]["labelmap"] is False for c in maps), "maps must load as scalar volumes"
    assert all(Path(c[1]).parent == tmp_path / "inputs" for c in images)
    colour = [c for c in rec.calls if c[1:3] == ("SetAndObserveColorNodeID", COLOR_NODE)]
    window = [c for c in rec.calls if c[1] == "SetWindowLevelMinMax"]
    assert len(colour) == 3 and {c[2:] for c in window} == {(0.5, 2.0)}, "the window comes from thresholds.json"
    assert next(c for c in rec.calls if c[1] == "SetLowerThreshold")[2] == 0.5
    assert next(c for c in rec.calls if c[1] == "SetAutoWindowLevel")[2] == 0
    layers = [c for c in rec.calls if c[0] == "layers"]
    assert all(c[1] and c[2].endswith("_anomaly_map.nii.gz") and c[3] == 0.5 for c in layers)
    assert len(segs) == 3 and all(s.GetNumberOfSegments() == 1 for s in segs)
    assert {s.segments[0].name for s in segs} == {"anomaly"}  # the healthy case's empty mask gets one too
    hidden = [c for c in rec.calls if c[1:] == ("SetVisibility", False)]
    assert {c[0] for c in hidden} >= {Path(m[1]).name for m in maps[:2]}, "other cases' maps are hidden"


def test_scene_opens_on_one_case_and_warns_without_inputs(tmp_path, caplog) -> None:
    run = make_run_3d(tmp_path)
    script = write_slicer_scene(run)  # no --images: the inputs of the run cannot be found
    assert "cannot be found" in caplog.text
    rec, _ = _run_script(script, browse=False)
    assert len([c for c in rec.calls if c[0] == "loadVolume"]) == 1, "only the first case is loaded at start"


def test_scene_without_thresholds_auto_windows_and_2d_runs_work(tmp_path) -> None:
    run = make_run_3d(tmp_path, n_cases=1, thresholds=False)
    rec, _ = _run_script(write_slicer_scene(run))
    assert not [c for c in rec.calls if c[1] == "SetWindowLevelMinMax"]
    run2 = make_run_2d(tmp_path)
    rec2, segs2 = _run_script(write_slicer_scene(run2))
    loaded = [Path(c[1]).name for c in rec2.calls if c[0] == "loadVolume"]
    assert loaded == ["img0.png", "img0_anomaly_map.nii.gz", "img1.png", "img1_anomaly_map.nii.gz"]
    assert not segs2


def test_check_map_rejects_nan_integer_and_off_grid_maps(tmp_path) -> None:
    ref = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), AFFINE), str(ref))
    good = tmp_path / "good_anomaly_map.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), AFFINE), str(good))
    check_map(good, ref)
    nan = np.zeros((4, 4, 4), np.float32)
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, AFFINE), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(DataError, match=r"nan.nii.gz: contains 1 NaN / Inf voxels"):
        check_map(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), AFFINE), str(tmp_path / "int.nii.gz"))
    with pytest.raises(DataError, match="not a float map"):
        check_map(tmp_path / "int.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 5), np.float32), AFFINE), str(tmp_path / "off.nii.gz"))
    with pytest.raises(DataError, match="not on the grid"):
        check_map(tmp_path / "off.nii.gz", ref)


def test_cli_slicer_scene_and_bad_input(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run_3d(tmp_path, n_cases=1)
    assert main(["slicer-scene", str(run), "--out", "scene.py"]) == 0
    assert (run / "scene.py").is_file() and "scene.py" in capsys.readouterr().out
    assert main(["slicer-scene", str(tmp_path / "missing")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["slicer-scene", str(empty)]) == 2
