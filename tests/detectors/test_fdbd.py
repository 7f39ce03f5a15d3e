"""fDBD: feature distance to the decision boundaries (medood.detectors.fdbd)."""

from __future__ import annotations

import numpy as np
import torch

from medood.detectors import FDBDDetector
from tests.detectors.posthoc_utils import assert_same_state, fit_in_batches, roundtrip, toy_features


def _np_fdbd(z: np.ndarray, w: np.ndarray, b: np.ndarray, mu: np.ndarray) -> np.ndarray:
    out = []
    for row in z.astype(np.float64):
        logits = w @ row + b
        y = int(np.argmax(logits))
        dists = [
            abs((w[c] - w[y]) @ row + (b[c] - b[y])) / np.linalg.norm(w[c] - w[y]) for c in range(len(b)) if c != y
        ]
        out.append(-np.mean(dists) / np.linalg.norm(row - mu))
    return np.array(out)


def test_score_equals_the_paper_formula() -> None:
    feats, _, w, b = toy_features(n=80, d=10, c=5)
    test, _, _, _ = toy_features(n=20, d=10, c=5, seed=3)
    test["logits"] = test["features"] @ w.T + b
    det = FDBDDetector(weight=w, bias=b).fit_features(feats)
    mu = feats["features"].double().numpy().mean(0)
    want = _np_fdbd(test["features"].numpy(), w.double().numpy(), b.double().numpy(), mu)
    np.testing.assert_allclose(det.score_features(test).image_score.numpy(), want, rtol=1e-5, atol=1e-6)
    norm = FDBDDetector(weight=w, bias=b, normalizer="norm")
    assert norm.is_fitted, "the ||z|| normaliser needs no training statistics"
    want_norm = _np_fdbd(test["features"].numpy(), w.double().numpy(), b.double().numpy(), np.zeros(10))
    np.testing.assert_allclose(norm.score_features(test).image_score.numpy(), want_norm, rtol=1e-5, atol=1e-6)


def test_streaming_fit_and_roundtrip() -> None:
    feats, _, w, b = toy_features(n=50)
    one = FDBDDetector(weight=w, bias=b).fit_features(feats)
    assert_same_state(one, fit_in_batches(FDBDDetector(weight=w, bias=b), feats, None, size=7))
    fresh = roundtrip(one, lambda: FDBDDetector(weight=w, bias=b))
    torch.testing.assert_close(fresh.score_features(feats).image_score, one.score_features(feats).image_score)
