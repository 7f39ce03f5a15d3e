"""One backbone pass feeding many post-hoc detectors (medood.detectors.posthoc)."""

from __future__ import annotations

import pytest
import torch

from medood.detectors import (
    EnergyDetector,
    GradNormDetector,
    KNNDetector,
    MahalanobisDetector,
    NECODetector,
    NERODetector,
    ODINDetector,
    ViMDetector,
)
from medood.detectors.base import OODOutput
from medood.detectors.posthoc import extract_features, fit_many, score_batch, score_many
from medood.detectors.registry import get_detector_class, list_detectors
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
    out = score_many(dets, model, test)
    for name, det in dets.items():
        expected = torch.cat([det.score(x).image_score for x in test])
        assert out.scores[name].shape == (9,)
        torch.testing.assert_close(out.scores[name], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits, model(torch.cat(test)), rtol=1e-4, atol=1e-5)
    assert out.labels is None, "plain tensor batches carry no labels"
    assert set(out.seconds) == {"features", "input_grad"}
    with_labels = score_many(dets, model, toy.id_loader(2, n=6, batch_size=4))
    assert with_labels.labels is not None
    assert with_labels.labels.tolist() == (torch.arange(6) % 3).tolist()
    with pytest.raises(ValueError, match="empty"):
        score_many(dets, model, [])


def test_only_odin_needs_input_gradients() -> None:
    needs = {n for n in list_detectors() if get_detector_class(n).needs_input_grad}
    assert needs == {"odin"}, "GradNorm's last-layer gradient has a closed form on the features"
    assert not GradNormDetector.needs_input_grad


class _ImageOnly(EnergyDetector):
    """A detector that declares it needs input gradients: score_batch must call score(images)."""

    needs_input_grad = True

    def score(self, batch: object) -> OODOutput:
        x = batch if isinstance(batch, torch.Tensor) else None
        assert x is not None, "score receives the batch's images"
        return OODOutput(image_score=x.flatten(1).sum(1))


def test_score_batch_uses_score_for_detectors_that_need_input_gradients(model: torch.nn.Module) -> None:
    x = toy.blob_images(2, 4, seed=3)[0]
    feats, _ = extract_features(model, [x])
    dets = {"energy": EnergyDetector(model=model), "image_only": _ImageOnly(model=model)}
    out = score_batch(dets, feats, x)
    torch.testing.assert_close(out["image_only"], x.flatten(1).sum(1))
    torch.testing.assert_close(out["energy"], dets["energy"].score_features(feats).image_score)
    with pytest.raises(ValueError, match="image_only needs its own pass"):
        score_batch(dets, feats)
    torch.testing.assert_close(score_many(dets, model, [x]).scores["image_only"], x.flatten(1).sum(1))


def test_bad_inputs(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="two detectors"):
        fit_many([EnergyDetector(model=model), EnergyDetector(model=model)], model, toy.id_loader(2))
    with pytest.raises(ValueError, match="empty"):
        fit_many({"m": MahalanobisDetector(model=model)}, model, [])
    with pytest.raises(ValueError, match="labels"):
        fit_many({"m": MahalanobisDetector(model=model)}, model, [b["image"] for b in toy.id_loader(2, n=6)])


@pytest.mark.parametrize("sd", [2, 3])
def test_every_registered_posthoc_detector_one_pass_equals_one_by_one(sd: int) -> None:
    """fit_many / score_many with every post-hoc detector of the registry (the issue-26 ones included) give the
    states and scores of fitting and scoring each detector alone, on a 2D and a 3D classifier."""
    from medood.engines.posthoc import build_detectors, posthoc_detector_names

    torch.manual_seed(0)
    model = toy.TinyClassifier(sd).eval()
    names = posthoc_detector_names()
    assert {"gen", "rmd", "fdbd", "dice", "ash", "ash_b", "ash_p", "scale", "nnguide", "she"} <= set(names)
    args = {n: get_detector_class(n).tiny_config(sd) for n in names}
    train = toy.id_loader(sd, n=30, batch_size=10)
    together = fit_many(build_detectors(names, model, args), model, train)
    test = [toy.blob_images(sd, 5, seed=9)[0], toy.ood_images(sd, 4, seed=9)]
    out = score_many(together, model, test)
    for name, alone in build_detectors(names, model, args).items():
        alone.fit(train)
        assert_same_state(together[name], alone)
        expected = torch.cat([alone.score(x).image_score for x in test])
        torch.testing.assert_close(out.scores[name], expected, rtol=1e-4, atol=1e-5, msg=name)
