"""GEN: generalised entropy of the top-M softmax probabilities (medood.detectors.gen)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.detectors import GENDetector


def _np_gen(logits: np.ndarray, gamma: float, m: int) -> np.ndarray:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top = -np.sort(-p, axis=1)[:, :m]
    return (top**gamma * (1 - top) ** gamma).sum(axis=1)


@pytest.mark.parametrize(("c", "gamma", "m"), [(5, 0.1, 100), (12, 0.1, 4), (3, 0.5, 2)])
def test_score_equals_the_paper_formula(c: int, gamma: float, m: int) -> None:
    logits = 3 * torch.randn(40, c, generator=torch.Generator().manual_seed(c))
    det = GENDetector(gamma=gamma, top_m=m)
    assert det.is_fitted, "GEN needs no fit"
    got = det.score_features({"logits": logits}).image_score.numpy()
    np.testing.assert_allclose(got, _np_gen(logits.numpy(), gamma, m), rtol=1e-5, atol=1e-5)


def test_confident_prediction_scores_lower_and_logits_from_features() -> None:
    det = GENDetector(weight=torch.eye(3), bias=torch.zeros(3))
    s = det.score_features({"features": torch.tensor([[20.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}).image_score
    assert s[0] < s[1], "a one-hot-like softmax has a lower generalised entropy than a flat one"
    with pytest.raises(ValueError, match="gamma"):
        GENDetector(gamma=1.5)
