"""NERO: relevance PCA, class centroids, bias scale, feature-norm term (medood.detectors.nero)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from medood.detectors import NERODetector
from tests.detectors.posthoc_utils import (
    assert_loader_fit_equals_fit_features,
    assert_same_state,
    buffer_shapes,
    fit_in_batches,
    roundtrip,
    toy_features,
)


def _toy_3class_4dim(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-1.0, 2.0, 0.0, 0.5], [0.0, 0.5, 2.0, -1.0]])
    b = torch.tensor([0.3, -0.2, 0.1])
    y = torch.arange(30) % 3
    a = (torch.eye(3, 4)[y] * 3 + torch.rand(30, 4, generator=g)).float()
    test = torch.rand(6, 4, generator=g) * 3
    return a, y, test, w, b


def _nero_numpy(a_tr, y_tr, a_te, w, b, k, n_comp):
    def rel(a):
        z = a @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        a1, w1 = np.c_[a, np.ones(len(a))], np.c_[w, b]
        return np.einsum("nc,nj,cj->nj", p / z, a1, w1)

    d = a_tr.shape[1]
    r_tr, r_te = rel(a_tr), rel(a_te)
    pca = PCA(n_comp).fit(r_tr[:, :d])
    p_tr, p_te = pca.transform(r_tr[:, :d]), pca.transform(r_te[:, :d])
    classes = np.unique(y_tr)
    cents = np.stack([p_tr[y_tr == c].mean(0) for c in classes])
    d_rel = np.abs(p_te[:, None] - cents[None]).sum(-1).min(1)
    raw = np.stack([r_tr[y_tr == c].mean(0) for c in classes])
    s = np.abs(r_tr[:, None] - raw[None]).sum(-1).min(1).mean() / np.abs(r_tr[:, d]).mean()
    idx = np.argsort(r_te[:, :d], axis=1)[:, :k]
    g = np.abs(np.take_along_axis(a_te, idx, 1)).sum(1) / np.abs(a_te).sum(1)
    return (d_rel + s * np.abs(r_te[:, d])) * g, r_te


def test_score_matches_numpy_reference_on_3class_4dim_toy() -> None:
    a, y, test, w, b = _toy_3class_4dim()
    det = NERODetector(weight=w, bias=b, k=2, eps=0.0).fit_features({"features": a}, y)
    assert det.pca_components.shape == (4, 2)  # int(2 * 4 / 3) = 2 components
    assert det.centroids.shape == (3, 2)
    out = det.score_features({"features": test})
    ref, rel = _nero_numpy(
        a.double().numpy(), y.numpy(), test.double().numpy(), w.double().numpy(), b.double().numpy(), 2, 2
    )
    np.testing.assert_allclose(out.image_score.numpy(), ref, rtol=1e-3, atol=1e-4)
    assert out.extras is not None
    np.testing.assert_allclose(out.extras["relevance"].numpy(), rel, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.extras["relevance"].sum(1), torch.ones(6), rtol=1e-4, atol=1e-4)


def test_streaming_fit_equals_one_shot() -> None:
    feats, y, w, b = toy_features(n=70)
    one = NERODetector(weight=w, bias=b, k=5).fit_features(feats, y)
    stream = fit_in_batches(NERODetector(weight=w, bias=b, k=5), feats, y, size=16)
    assert_same_state(one, stream, atol=1e-4)


def test_loader_fit_equals_fit_features() -> None:
    assert_loader_fit_equals_fit_features(lambda m: NERODetector(model=m, k=6))


def test_fitted_state_size_does_not_depend_on_n_and_roundtrips() -> None:
    small, ys, w, b = toy_features(n=30)
    large, yl, _, _ = toy_features(n=300)
    make = lambda: NERODetector(weight=w, bias=b, k=5)  # noqa: E731
    a, bdet = make().fit_features(small, ys), make().fit_features(large, yl)
    assert buffer_shapes(a) == buffer_shapes(bdet)
    fresh = roundtrip(bdet, make)
    torch.testing.assert_close(fresh.score_features(small).image_score, bdet.score_features(small).image_score)


def test_kmeans_centroids_and_label_errors() -> None:
    feats, y, w, b = toy_features(n=90)
    det = NERODetector(weight=w, bias=b, k=5, k_means_per_class=2).fit_features(feats, y)
    assert det.centroids.shape == (6, det.pca_components.shape[1])
    assert torch.isfinite(det.score_features(feats).image_score).all()
    with pytest.raises(ValueError, match="labels"):
        NERODetector(weight=w, bias=b).fit_features(feats)
    pseudo = NERODetector(weight=w, bias=b, use_predicted_labels=True).fit_features(feats)
    assert pseudo.is_fitted
    with pytest.raises(ValueError, match="head"):
        NERODetector()
