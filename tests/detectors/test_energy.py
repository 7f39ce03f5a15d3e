"""Energy score (medood.detectors.energy)."""

from __future__ import annotations

import math

import pytest
import torch

from medood.detectors import EnergyDetector, get_detector
from tests.helpers import toy


def test_energy_is_minus_logsumexp() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    out = EnergyDetector().score_features({"logits": logits}).image_score
    expected = torch.tensor([-math.log(2.0), -math.log(math.exp(2.0) + math.exp(-1.0))])
    torch.testing.assert_close(out, expected)
    hot = EnergyDetector(temperature=2.0).score_features({"logits": logits}).image_score
    torch.testing.assert_close(hot[0], torch.tensor(-2.0 * math.log(2.0)))


def test_logits_recomputed_from_features_and_head() -> None:
    w, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 1.0])
    feats = torch.tensor([[1.0, 2.0]])
    out = EnergyDetector(weight=w, bias=b).score_features({"features": feats}).image_score
    torch.testing.assert_close(out, -torch.logsumexp(torch.tensor([[1.0, 3.0]]), dim=1))


def test_needs_no_fit_and_scores_images() -> None:
    torch.manual_seed(0)
    det = get_detector("energy", model=toy.TinyClassifier(2).eval())
    assert det.is_fitted
    assert det.score(toy.blob_images(2, 4, seed=0)[0]).image_score.shape == (4,)
    with pytest.raises(ValueError, match="temperature"):
        EnergyDetector(temperature=0.0)
