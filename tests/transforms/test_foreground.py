"""The foreground as data: computed once per case by Foregroundd, carried in the batch and through Invertd, read by
the volume score and the per-case result instead of being recomputed by the detector."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Spacingd

from medood.detectors.base import OODDetector, OODOutput
from medood.engines import OODEvaluator
from medood.engines.evaluator import RESULT_KEY
from medood.inferers import OODInferer
from medood.transforms import Foreground, Foregroundd
from medood.utils.reduce import reduce_map


class _MapDetector(OODDetector):
    """|x| as the map; counts its own foreground computations (there must be none when the batch has one)."""

    requires_fit = False
    produces_map = True
    score_reduction = "mean"

    def __init__(self) -> None:
        super().__init__()
        self.own_foregrounds = 0

    def foreground_mask(self, x: torch.Tensor) -> torch.Tensor:
        self.own_foregrounds += 1
        return x.abs().amax(1, keepdim=True) > 0

    def predict_map(self, x: torch.Tensor) -> torch.Tensor:  # the map alone, as MIM's (no score on the way)
        return x.abs().float()

    def score_features(self, features: Mapping[str, torch.Tensor]) -> OODOutput:
        x = features["image"]
        amap = self.predict_map(x)
        return OODOutput(self.map_score(amap, x), amap)


def test_foreground_is_computed_once_per_case_and_read_by_every_consumer(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        vol = np.zeros((8, 7, 6), np.float32)
        vol[2:6, 1:6, 1 + i : 5] = rng.random((4, 5, 4 - i)) + 0.5
        nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 2.0, 1.0])), tmp_path / f"c{i}.nii.gz")
        files.append(vol)
    calls = []
    original = Foreground.__call__
    monkeypatch.setattr(Foreground, "__call__", lambda self, img: calls.append(1) or original(self, img))
    pre = Compose([
        LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
        Spacingd("image", pixdim=(1.5, 1.5, 2.0), mode="nearest"), Foregroundd("image"),
    ])  # fmt: skip
    post = Invertd(["pred", "foreground"], pre, orig_keys="image", nearest_interp=[False, True])
    det = _MapDetector()
    data = [{"image": str(tmp_path / f"c{i}.nii.gz")} for i in range(3)]
    results = []
    evaluator = OODEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(data, pre), batch_size=2), network=det,
        inferer=OODInferer(slice_axes=[2], slice_foreground=True), postprocessing=post,
    )  # fmt: skip
    evaluator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: results.extend(item[RESULT_KEY] for item in e.state.output)
    )
    evaluator.run()
    assert len(calls) == 3, "one foreground computation per case, in the preprocessing"
    assert det.own_foregrounds == 0, "the detector read the batch's foreground instead of recomputing it"
    assert [r.case for r in results] == ["c0", "c1", "c2"]
    for r, vol in zip(results, files, strict=True):
        fg = r.foreground[0].numpy()
        assert fg.shape == vol.shape, "the foreground went back to the input grid with the map (Invertd)"
        np.testing.assert_array_equal(fg, vol > 0)
        amap = torch.as_tensor(r.anomaly_map)[None].float()
        expected = reduce_map(amap, "mean", mask=torch.as_tensor(fg)[None, None]).item()
        assert abs(r.score - expected) < 1e-4 * max(1.0, abs(expected)), "volume score = mean over the foreground"
        empty = np.nonzero(~(vol > 0).any(axis=(0, 1)))[0]
        assert all(float(r.slice_scores[2][z]) == 0.0 for z in empty), "slices without foreground score 0"
