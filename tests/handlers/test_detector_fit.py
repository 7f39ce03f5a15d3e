"""DetectorFitHandler fits several post-hoc detectors from one engine pass, identically to fitting them alone."""

from __future__ import annotations

import torch
from monai.engines import SupervisedEvaluator

from medood.detectors import get_detector
from medood.handlers import DetectorFitHandler
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
