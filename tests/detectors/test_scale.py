"""SCALE: activation scaling by the top-k sum ratio (medood.detectors.scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.detectors import SCALEDetector
from tests.detectors.posthoc_utils import np_logsumexp, toy_features


@pytest.mark.parametrize("p", [85.0, 60.0])
def test_score_equals_the_paper_formula(p: float) -> None:
    feats, _, w, b = toy_features(n=30, d=32, c=4)
    a = feats["features"].double().numpy()
    k = a.shape[1] - int(np.round(a.shape[1] * p / 100))
    top_sum = -np.sort(-a, axis=1)[:, :k].sum(axis=1)
    scaled = a * np.exp(a.sum(axis=1) / top_sum)[:, None]
    want = -np_logsumexp(scaled @ w.double().numpy().T + b.double().numpy())
    det = SCALEDetector(weight=w, bias=b, percentile=p)
    assert det.is_fitted, "SCALE needs no fit"
    np.testing.assert_allclose(det.score_features(feats).image_score.numpy(), want, rtol=1e-5, atol=1e-5)


def test_zero_activations_are_finite() -> None:
    _, _, w, b = toy_features(n=4)
    s = SCALEDetector(weight=w, bias=b).score_features({"features": torch.zeros(2, 16)}).image_score
    torch.testing.assert_close(s, -torch.logsumexp(b, dim=0).expand(2), msg="zero activations give the bias energy")
