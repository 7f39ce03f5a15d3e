"""Report layout: radiological tiles with R / L markers, legend below the bars, calibration n = images."""

from __future__ import annotations

import json
import re

import numpy as np

from medood.io import run_folder as rf
from medood.reports import write_report, write_slicer_scene
from medood.reports.montage import overlay_tile
from medood.reports.run_dir import read_run
from medood.reports.svg import histogram_svg
from tests.helpers.run_folder import make_run_3d


def test_tiles_are_radiological_with_side_markers() -> None:
    image = np.zeros((40, 30), np.float32)
    image[30:38, 10:20] = 1.0  # high first index = towards the patient's right (RAS)
    tile = overlay_tile(image, np.zeros_like(image), None, (0.5, 1.0))
    grey = tile[5:, :, :].astype(int).sum(-1)  # below the markers
    cols = np.nonzero(grey.max(0) > 600)[0]
    assert cols.size and cols.max() < tile.shape[1] // 2, "the patient's right is drawn on the image's left"
    yellow = (tile[..., 0] > 200) & (tile[..., 1] > 200) & (tile[..., 2] < 80)
    assert yellow[:10, :8].any() and yellow[:10, -8:].any(), "R and L are marked"


def test_histogram_legend_below_bars_and_given_counts() -> None:
    svg = histogram_svg({"ID reference": list(np.linspace(0, 1, 101)), "run": [0.2, 0.9]}, counts={"ID reference": 12})
    assert "ID reference (n=12)" in svg and "run (n=2)" in svg
    axis_bottom = 200 - 28
    ys = [float(y) for y in re.findall(r'<text x="[\d.]+" y="([\d.]+)" font-size="11" fill=', svg)]
    assert ys and min(ys) > axis_bottom, "legend rows sit under the plot, never over the bars"


def test_report_and_scene_read_only_the_current_runs_cases(tmp_path) -> None:
    """A folder that held 6 cases, rerun for 2 (run.json lists them): report and scene show those 2 only."""
    run = make_run_3d(tmp_path, n_cases=6)
    old = read_run(run)
    assert len(old.cases) == 6
    keep = [c.name for c in old.cases[:2]]
    (run / rf.RUN_MANIFEST).write_text(json.dumps({"run_id": "x", "cases": keep, "map_kind": "anomaly"}))
    assert [c.name for c in read_run(run).cases] == keep
    html = write_report(run).read_text()
    assert "2 cases" in html and all(c.name not in html for c in old.cases[2:])
    scene = write_slicer_scene(run, images_dir=tmp_path / "inputs").read_text()
    assert all(c in scene for c in keep) and all(c.name not in scene for c in old.cases[2:])
