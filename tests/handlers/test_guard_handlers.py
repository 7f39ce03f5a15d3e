"""The guard handlers on an in-process evaluator: fit, calibrate and score from the engine's own forward hooks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import UNet

from medood.detectors.spectral import SpectralDetector
from medood.handlers.guard import FeatureCalibrationHandler, FeatureFitHandler, GuardScoreWriter, item_features
from medood.io.run_folder import read_score_rows
from medood.networks.feature_maps import encoder_stages
from medood.utils.conformal import conformal_threshold


def test_item_features_one_call_or_windows() -> None:
    a, b, c = torch.randn(2, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(item_features({"x": [a]}, 2)["x"], a)
    joined = item_features({"x": [b, c]}, 1)["x"]
    assert joined.shape == (1, 3, 48)
    torch.testing.assert_close(joined[0, :, :16], b[0].reshape(3, 16))
    torch.testing.assert_close(joined[0, :, 16:32], c[0].reshape(3, 16))
    with pytest.raises(ValueError, match="batch_size 1"):
        item_features({"x": [a, c]}, 2)
    with pytest.raises(RuntimeError, match="no features"):
        item_features({}, 1)


def _cases(n: int, seed: int, invert: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 16)] * 2, indexing="ij")).pow(2).sum(0)
    out = []
    for i in range(n):
        x = (grid < 0.6).float() * (0.5 + grid) + 0.02 * torch.randn(16, 16, generator=g)
        x = 1.2 - x if invert else x
        out.append({"image": MetaTensor(x[None], meta={"filename_or_obj": f"/data/case_{seed}_{i}.png"})})
    return out


def _run(net: torch.nn.Module, cases: list[dict], handler: object, inferer: object = None, batch: int = 1) -> None:
    loader = []
    for i in range(0, len(cases), batch):
        chunk = cases[i : i + batch]
        names = [c["image"].meta["filename_or_obj"] for c in chunk]
        loader.append(
            {"image": MetaTensor(torch.stack([c["image"].as_tensor() for c in chunk]), meta={"filename_or_obj": names})}
        )
    SupervisedEvaluator(
        "cpu", loader, net, inferer=inferer or SimpleInferer(), val_handlers=[handler], decollate=False
    ).run()


@pytest.mark.parametrize("sliding", [False, True])
def test_fit_calibrate_and_write_scores(tmp_path: Path, sliding: bool) -> None:
    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    det = SpectralDetector(layers=encoder_stages(net))  # no model: the handlers' hooks feed it
    inferer = SlidingWindowInferer((8, 8), sw_batch_size=2, overlap=0) if sliding else None
    _run(net, _cases(8, 0), FeatureFitHandler(det, save_path=tmp_path / "det.pt"), inferer, batch=1 if sliding else 4)
    assert det.is_fitted and det.signatures_0.shape[0] == 8 and (tmp_path / "det.pt").is_file()
    calibration = FeatureCalibrationHandler(det)
    _run(net, _cases(5, 1), calibration, inferer)
    assert int(det.calibration.n_scores) == 5 and len(calibration.values) == 5
    threshold = conformal_threshold(calibration.values, 0.2).threshold  # 5 cases: rank 5, the largest
    assert threshold == max(calibration.values)
    writer = GuardScoreWriter(det, tmp_path / "out", threshold=threshold, threshold_info={"rule": "split-conformal"})
    _run(net, _cases(3, 2) + _cases(3, 3, invert=True), writer, inferer)
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert [r["case"] for r in rows] == [f"case_2_{i}" for i in range(3)] + [f"case_3_{i}" for i in range(3)]
    assert all(int(r["flagged"]) == int(float(r["score"]) > threshold) for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert min(scores[3:]) > max(scores[:3]), "inverted contrast scores higher"
    info = json.loads((tmp_path / "out" / "guard.json").read_text())
    assert info["n_cases"] == 6 and info["threshold"] == pytest.approx(threshold) and info["detector"] == "spectral"
    assert all(not m._forward_hooks for m in net.modules()), "the handlers remove their hooks at the end of a run"
    assert [r.flagged for r in read_score_rows(tmp_path / "out" / "scores.csv")] == [int(s > threshold) for s in scores]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["cases"] == [r["case"] for r in rows]

    # no threshold given: the detector's calibration (5 scores) refuses alpha 0.05; scores written, nothing flagged
    refused = GuardScoreWriter(det, tmp_path / "refused", false_alarm_rate=0.05)
    _run(net, _cases(3, 2), refused, inferer)
    parsed = read_score_rows(tmp_path / "refused" / "scores.csv")
    assert len(parsed) == 3 and all(r.flagged is None for r in parsed)
    info = json.loads((tmp_path / "refused" / "guard.json").read_text())
    assert info["threshold"] is None and info["n_flagged"] is None and "19" in info["threshold_rule"]["refused"]
    recorded = json.loads((tmp_path / "refused" / "thresholds.json").read_text())
    assert recorded["score_threshold"] is None and "refused" in recorded["score_rule"]


def test_guard_writer_run_folder_resumes_an_interrupted_run(tmp_path: Path) -> None:
    """``run_folder=True``: a run stopped after 2 of its 4 batches, a recorded case's file deleted, resumed: the
    network runs on that case's batch and the last two only; scores.csv / guard.json equal an uninterrupted run's."""
    import nibabel as nib
    import numpy as np
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    det = SpectralDetector(layers=encoder_stages(net))
    _run(net, _cases(8, 0), FeatureFitHandler(det), batch=4)
    files = []
    for i, case in enumerate(_cases(4, 2) + _cases(4, 3, invert=True)):
        files.append(tmp_path / "data" / f"c{i}.nii.gz")
        files[-1].parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(case["image"][0].numpy().astype(np.float32), np.eye(4)), files[-1])
    seen: list[int] = []
    net.register_forward_hook(lambda _m, inputs, _o: seen.append(int(inputs[0].shape[0])))

    def run(out: Path, mode: str, stop_after: int = 0) -> None:
        def mark(engine: SupervisedEvaluator) -> None:  # a per-case file, as the spectral bundle's SaveImaged writes
            for name in engine.state.batch["image"].meta["filename_or_obj"]:
                (out / f"{Path(name).name[:-7]}_mark.txt").write_text(name)
            if engine.state.iteration == stop_after:
                raise RuntimeError("killed")

        writer = GuardScoreWriter(
            det, out, threshold=1.0, run_mode=mode, case_files=["{case}_mark.txt"]
        )
        data = Dataset([{"image": str(f)} for f in files], Compose([LoadImaged("image"), EnsureChannelFirstd("image")]))
        ev = SupervisedEvaluator("cpu", DataLoader(data, batch_size=2), net, val_handlers=[writer], decollate=False)
        ev.add_event_handler(Events.ITERATION_COMPLETED, mark)  # after the writer: the files exist when it records
        ev.run()

    run(tmp_path / "clean", "new")
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "killed", "new", stop_after=2)
    assert not (tmp_path / "killed" / "scores.csv").exists()
    (tmp_path / "killed" / "c0_mark.txt").unlink()  # a recorded case without its file: its batch is redone
    seen.clear()
    run(tmp_path / "killed", "resume")
    assert seen == [2, 2, 2], "batches 1, 3 and 4 only"
    for name in ("scores.csv", "guard.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["cases"] == [f"c{i}" for i in range(8)]
