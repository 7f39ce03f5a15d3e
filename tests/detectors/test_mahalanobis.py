"""Class-conditional Mahalanobis with a tied covariance (medood.detectors.mahalanobis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.detectors import MahalanobisDetector
from tests.detectors.posthoc_utils import (
    assert_loader_fit_equals_fit_features,
    assert_same_state,
    buffer_shapes,
    fit_in_batches,
    roundtrip,
    toy_features,
)


def _numpy_reference(train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
    means = np.stack([train[labels == c].mean(0) for c in np.unique(labels)])
    centred = train - means[np.searchsorted(np.unique(labels), labels)]
    prec = np.linalg.pinv(centred.T @ centred / len(train))  # tied, maximum-likelihood covariance
    d = test[:, None, :] - means[None]
    return np.einsum("ncd,de,nce->nc", d, prec, d).min(1)


def test_matches_numpy_tied_covariance() -> None:
    feats, y, _, _ = toy_features(n=90)
    det = MahalanobisDetector().fit_features(feats, y)
    test, _, _, _ = toy_features(n=12, seed=5)
    ref = _numpy_reference(feats["features"].double().numpy(), y.numpy(), test["features"].double().numpy())
    np.testing.assert_allclose(det.score_features(test).image_score.numpy(), ref, rtol=2e-3, atol=1e-3)


def test_streaming_equals_one_shot_and_memory_is_bounded() -> None:
    feats, y, _, _ = toy_features(n=90)
    one = MahalanobisDetector().fit_features(feats, y)
    stream = fit_in_batches(MahalanobisDetector(), feats, y, size=7)
    assert_same_state(one, stream, atol=1e-3)
    big, yb, _, _ = toy_features(n=900)
    assert buffer_shapes(MahalanobisDetector().fit_features(big, yb)) == buffer_shapes(one)


def test_roundtrip_direction_and_labels() -> None:
    feats, y, _, _ = toy_features(n=90)
    det = MahalanobisDetector().fit_features(feats, y)
    fresh = roundtrip(det, MahalanobisDetector)
    torch.testing.assert_close(fresh.score_features(feats).image_score, det.score_features(feats).image_score)
    far = {"features": feats["features"] + 5.0}
    assert det.score_features(far).image_score.min() > det.score_features(feats).image_score.max()
    with pytest.raises(ValueError, match="labels"):
        MahalanobisDetector().fit_features(feats)
    assert MahalanobisDetector(use_predicted_labels=True).fit_features(feats).class_means.shape[1] == 16


def test_loader_fit_equals_fit_features() -> None:
    assert_loader_fit_equals_fit_features(lambda m: MahalanobisDetector(model=m))
