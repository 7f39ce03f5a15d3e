"""Report layout: radiological tiles with R / L markers, legend below the bars, calibration n = images."""

from __future__ import annotations

import re

import numpy as np

from medood.reports.montage import overlay_tile
from medood.reports.svg import histogram_svg


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
