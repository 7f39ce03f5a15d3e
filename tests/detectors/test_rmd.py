"""Relative Mahalanobis distance (medood.detectors.rmd)."""

from __future__ import annotations

import numpy as np
import torch

from medood.detectors import RMDDetector
from tests.detectors.posthoc_utils import assert_same_state, fit_in_batches, roundtrip, toy_features


def _np_rmd(train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
    x, t = train.astype(np.float64), test.astype(np.float64)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    prec = np.linalg.pinv(centred.T @ centred / len(x))
    mu0 = x.mean(0)
    prec0 = np.linalg.pinv((x - mu0).T @ (x - mu0) / len(x))
    md = np.stack([np.einsum("nd,de,ne->n", t - m, prec, t - m) for m in means], axis=1)
    md0 = np.einsum("nd,de,ne->n", t - mu0, prec0, t - mu0)
    return (md - md0[:, None]).min(axis=1)


def test_score_equals_the_paper_formula() -> None:
    feats, labels, _, _ = toy_features(n=300, d=6, c=3)
    test, _, _, _ = toy_features(n=25, d=6, c=3, seed=1)
    det = RMDDetector().fit_features(feats, labels)
    got = det.score_features(test).image_score.numpy()
    want = _np_rmd(feats["features"].numpy(), labels.numpy(), test["features"].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_streaming_fit_and_roundtrip() -> None:
    feats, labels, _, _ = toy_features(n=90, d=6, c=3)
    one = RMDDetector().fit_features(feats, labels)
    stream = fit_in_batches(RMDDetector(), feats, labels, size=16)
    assert_same_state(one, stream, atol=1e-3)
    fresh = roundtrip(one, RMDDetector)
    torch.testing.assert_close(fresh.score_features(feats).image_score, one.score_features(feats).image_score)
