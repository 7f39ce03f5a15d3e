"""DetectorFitHandler fits several post-hoc detectors from one engine pass, identically to fitting them alone."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from monai.engines import SupervisedEvaluator

from medood.detectors import get_detector
from medood.handlers import CalibrationHandler, DetectorFitHandler
from tests.helpers import toy


def test_one_engine_pass_fits_every_detector_like_fit_features(tmp_path) -> None:
    model = toy.trained_classifier(2)
    loader = toy.id_loader(2, n=30, batch_size=10)
    names = ("mahalanobis", "knn", "vim")
    via_engine = [get_detector(n, model=model) for n in names]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=model,
        decollate=False,
        val_handlers=[DetectorFitHandler(via_engine, save_path=tmp_path / "detectors.pt")],
    )
    evaluator.run()

    x = torch.cat([b["image"] for b in loader])
    y = torch.cat([b["label"] for b in loader])
    for name, det in zip(names, via_engine):
        assert det.is_fitted
        alone = get_detector(name, model=model)
        alone.fit_features(alone.extract_features(x), y)
        probe = toy.ood_images(2, 6, seed=3)
        torch.testing.assert_close(det.score(probe).image_score, alone.score(probe).image_score, atol=1e-4, rtol=1e-4)

    saved = torch.load(tmp_path / "detectors.pt", weights_only=True)
    assert set(saved) == set(names)
    fresh = get_detector("mahalanobis", model=model)
    fresh.load_state_dict(saved["mahalanobis"])
    torch.testing.assert_close(fresh.score(x[:4]).image_score, via_engine[0].score(x[:4]).image_score)


def test_calibration_reads_the_batch_foreground() -> None:
    """``foreground="batch"``: healthy map values inside the case's foreground (Foregroundd), zeros included."""
    amap = torch.zeros(1, 4, 4)
    amap[0, 1, 1] = 3.0  # one hot voxel inside, the rest of the foreground is exactly 0
    fg = torch.zeros(1, 4, 4, dtype=torch.uint8)
    fg[0, :2, :2] = 1
    handler = CalibrationHandler(SimpleNamespace(map_has_threshold=True), foreground="batch")  # type: ignore[arg-type]
    handler._started(None)  # type: ignore[arg-type]
    item = {"ood_score": torch.tensor(1.0), "pred": amap, "foreground": fg}
    engine = SimpleNamespace(state=SimpleNamespace(output=[item]))
    handler._iteration(engine)  # type: ignore[arg-type]
    assert sorted(handler.values[0].tolist()) == [0.0, 0.0, 0.0, 3.0], "the 4 foreground voxels, zeros included"
    engine.state.output[0].pop("foreground")
    handler._iteration(engine)  # type: ignore[arg-type]
    assert handler.values[1].tolist() == [3.0], "without a foreground in the item: map voxels > 0"
