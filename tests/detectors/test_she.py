"""SHE: simplified Hopfield energy with class-mean patterns (medood.detectors.she)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.detectors import SHEDetector
from tests.detectors.posthoc_utils import assert_same_state, fit_in_batches, roundtrip, toy_features


def test_score_equals_the_paper_formula() -> None:
    feats, labels, w, b = toy_features(n=90, d=16, c=3, seed=5)
    test, _, _, _ = toy_features(n=20, d=16, c=3, seed=4)
    test["logits"] = test["features"] @ w.T + b
    det = SHEDetector().fit_features(feats, labels)
    f, y = feats["features"].double().numpy(), labels.numpy()
    pred = feats["logits"].numpy().argmax(1)
    assert 0 < (pred == y).sum() < len(y), "the toy head misclassifies some training rows: the mask matters"
    assert all(((y == c) & (pred == c)).any() for c in range(3)), "every class has a correct sample"
    patterns = np.stack([f[(y == c) & (pred == c)].mean(0) for c in range(3)])
    q = test["features"].double().numpy()
    want = -(q * patterns[test["logits"].numpy().argmax(1)]).sum(1)
    np.testing.assert_allclose(det.score_features(test).image_score.numpy(), want, rtol=1e-5, atol=1e-5)


def test_class_without_correct_samples_falls_back_and_labels_are_needed() -> None:
    feats, labels, _, _ = toy_features(n=30, d=16, c=3)
    logits = torch.zeros(30, 4)
    logits[:, 0] = 1.0  # everything predicted as class 0: classes 1 and 2 have no correct sample, 3 none at all
    det = fit_in_batches(SHEDetector(), {"features": feats["features"], "logits": logits}, labels, size=1)
    f = feats["features"]
    torch.testing.assert_close(det.patterns[1], f[labels == 1].mean(0))
    assert torch.equal(det.patterns[3], torch.zeros(16))
    with pytest.raises(ValueError, match="labels"):
        SHEDetector().fit_features(feats)


def test_streaming_fit_and_roundtrip() -> None:
    feats, labels, _, _ = toy_features(n=60)
    one = SHEDetector().fit_features(feats, labels)
    assert_same_state(one, fit_in_batches(SHEDetector(), feats, labels, size=8))
    fresh = roundtrip(one, SHEDetector)
    torch.testing.assert_close(fresh.score_features(feats).image_score, one.score_features(feats).image_score)
