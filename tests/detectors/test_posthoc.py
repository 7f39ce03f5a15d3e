"""One backbone pass feeding many post-hoc detectors (medood.detectors.posthoc)."""

from __future__ import annotations

import pytest
import torch

from medood.detectors import (
    EnergyDetector,
    KNNDetector,
    MahalanobisDetector,
    NECODetector,
    NERODetector,
    ODINDetector,
    ViMDetector,
)
from medood.detectors.posthoc import extract_features, fit_many, score_many
from tests.detectors.posthoc_utils import assert_same_state
from tests.helpers import toy


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return toy.TinyClassifier(2).eval()


def _detectors(model: torch.nn.Module) -> dict:
    return {
        "energy": EnergyDetector(model=model),
        "knn": KNNDetector(model=model, k=5),
        "mahalanobis": MahalanobisDetector(model=model),
        "neco": NECODetector(model=model, neco_dim=4),
        "nero": NERODetector(model=model, k=6),
        "vim": ViMDetector(model=model),
    }


def test_extract_features_shapes_and_chunking(model: torch.nn.Module) -> None:
    loader = toy.id_loader(2, n=20, batch_size=8)
    feats, labels = extract_features(model, loader, chunk_size=3)
    assert feats["features"].shape == (20, 16)
    assert feats["logits"].shape == (20, 3)
    torch.testing.assert_close(feats["logits"], model(torch.cat([b["image"] for b in loader])), rtol=1e-4, atol=1e-5)
    assert labels is not None
    assert labels.tolist() == (torch.arange(20) % 3).tolist()
    _, no_labels = extract_features(model, [b["image"] for b in loader])
    assert no_labels is None


def test_fit_many_equals_fitting_each_alone(model: torch.nn.Module) -> None:
    loader = toy.id_loader(2, n=30, batch_size=10)
    together = fit_many(_detectors(model), model, loader)
    for name, alone in _detectors(model).items():
        alone.fit(loader)
        assert together[name].is_fitted
        assert_same_state(together[name], alone)


def test_score_many_equals_scoring_each_alone(model: torch.nn.Module) -> None:
    dets = fit_many(_detectors(model), model, toy.id_loader(2, n=30, batch_size=10))
    dets["odin"] = ODINDetector(model=model)
    test = [toy.blob_images(2, 5, seed=9)[0], toy.ood_images(2, 4, seed=9)]
    scores = score_many(dets, model, test)
    for name, det in dets.items():
        expected = torch.cat([det.score(x).image_score for x in test])
        assert scores[name].shape == (9,)
        torch.testing.assert_close(scores[name], expected, rtol=1e-4, atol=1e-5)


def test_bad_inputs(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="two detectors"):
        fit_many([EnergyDetector(model=model), EnergyDetector(model=model)], model, toy.id_loader(2))
    with pytest.raises(ValueError, match="empty"):
        fit_many({"m": MahalanobisDetector(model=model)}, model, [])
    with pytest.raises(ValueError, match="labels"):
        fit_many({"m": MahalanobisDetector(model=model)}, model, [b["image"] for b in toy.id_loader(2, n=6)])
