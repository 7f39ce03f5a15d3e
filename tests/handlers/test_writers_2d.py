"""A non-square 2D image goes read -> resize -> detector map -> Invertd -> writer: the PNG overlay and the 2D
NIfTI map keep rows and columns where they were."""

from __future__ import annotations

import csv

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, Invertd, Resized
from PIL import Image

from medood.data.image2d import read_map_nifti_2d
from medood.data.transforms import LoadImage2Dd
from medood.engines import OODEvaluator
from medood.handlers import OODResultWriter
from medood.inferers import OODInferer


class BrightnessMap(torch.nn.Module):
    """A 'detector' whose map is the image brightness (so the map's hot spot is the marker)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1, keepdim=True)


def test_non_square_png_keeps_orientation(tmp_path) -> None:
    h, w = 20, 33
    img = np.zeros((h, w, 3), np.uint8)
    img[2:4, 28:31] = 255  # marker: rows 2-3, columns 28-30 (top right)
    Image.fromarray(img).save(tmp_path / "case.png")
    pre = Compose([LoadImage2Dd("image", scale=True), Resized("image", (16, 16))])
    post = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)
    out = tmp_path / "out"
    evaluator = OODEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset([{"image": str(tmp_path / "case.png")}], pre)),
        network=BrightnessMap(),
        inferer=OODInferer(slice_axes=(0,)),
        postprocessing=post,
        val_handlers=[OODResultWriter(out, threshold=0.5)],
    )
    evaluator.run()

    amap = read_map_nifti_2d(out / "case_anomaly_map.nii.gz")
    assert amap.shape == (h, w)
    r, c = np.unravel_index(int(np.argmax(amap)), amap.shape)
    assert r < 6 and c > 24, f"hot spot at row {r}, column {c}: orientation lost"
    overlay = np.asarray(Image.open(out / "case_anomaly_overlay.png"))
    assert overlay.shape == (h, w, 3)
    hot = overlay[..., 0].astype(int) - overlay[..., 2].astype(int)  # the hot colour map is red-yellow
    r2, c2 = np.unravel_index(int(np.argmax(hot)), hot.shape)
    assert r2 < 6
    assert c2 > 24
    seg = read_map_nifti_2d(out / "case_anomaly_seg.nii.gz")
    assert seg.shape == (h, w)
    assert seg[3, 29] == 1
    assert seg[15, 5] == 0
    rows = list(csv.DictReader(open(out / "slice_scores.csv")))
    assert len(rows) == h
    assert {r["axis"] for r in rows} == {"0"}
