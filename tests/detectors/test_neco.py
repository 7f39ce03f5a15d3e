"""NECO: standardised PCA norm ratio (medood.detectors.neco)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from medood.detectors import NECODetector
from tests.detectors.posthoc_utils import (
    assert_loader_fit_equals_fit_features,
    assert_same_state,
    buffer_shapes,
    fit_in_batches,
    roundtrip,
    toy_features,
)


def _sklearn_neco(train: np.ndarray, test: np.ndarray, k: int, raw_norm: bool) -> np.ndarray:
    ss = StandardScaler().fit(train)
    pca = PCA(train.shape[1]).fit(ss.transform(train))
    z = ss.transform(test)
    reduced = pca.transform(z)[:, :k]
    denom = np.linalg.norm(test if raw_norm else z, axis=1)
    return np.linalg.norm(reduced, axis=1) / denom


def test_matches_sklearn_both_norm_paths_and_maxlogit() -> None:
    feats, _, _w, _b = toy_features(n=80)
    test, _, _, _ = toy_features(n=10, seed=2)
    tr, te = feats["features"].double().numpy(), test["features"].double().numpy()
    for raw in (False, True):
        det = NECODetector(neco_dim=4, standardize_norm=not raw).fit_features(feats)
        ref = -_sklearn_neco(tr, te, 4, raw)
        np.testing.assert_allclose(det.score_features(test).image_score.numpy(), ref, rtol=1e-3, atol=1e-4)
    det = NECODetector(neco_dim=4, multiply_maxlogit=True).fit_features(feats)
    ref = -_sklearn_neco(tr, te, 4, False) * test["logits"].amax(1).double().numpy()
    np.testing.assert_allclose(det.score_features(test).image_score.numpy(), ref, rtol=1e-3, atol=1e-4)


def test_dim_clipped_streaming_and_roundtrip() -> None:
    feats, _, _, _ = toy_features(n=80)
    assert NECODetector().fit_features(feats).components.shape == (16, 15)  # default 100 clipped to D - 1
    one = NECODetector(neco_dim=4).fit_features(feats)
    stream = fit_in_batches(NECODetector(neco_dim=4), feats, None, size=11)
    assert_same_state(one, stream, atol=1e-4)
    big, _, _, _ = toy_features(n=800)
    assert buffer_shapes(NECODetector(neco_dim=4).fit_features(big)) == buffer_shapes(one)
    fresh = roundtrip(one, lambda: NECODetector(neco_dim=4))
    torch.testing.assert_close(fresh.score_features(feats).image_score, one.score_features(feats).image_score)
    assert (one.score_features(feats).image_score <= 0).all()
    assert (one.score_features(feats).image_score >= -1).all()


def test_loader_fit_equals_fit_features() -> None:
    assert_loader_fit_equals_fit_features(lambda m: NECODetector(model=m, neco_dim=4))
