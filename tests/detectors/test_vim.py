"""ViM: origin, principal space, alpha, virtual-logit score (medood.detectors.vim)."""

from __future__ import annotations

import numpy as np
import torch

from medood.detectors import ViMDetector
from medood.detectors.vim import default_principal_dim
from tests.detectors.posthoc_utils import (
    assert_loader_fit_equals_fit_features,
    assert_same_state,
    buffer_shapes,
    fit_in_batches,
    roundtrip,
    toy_features,
)


def _numpy_vim(train: np.ndarray, train_logits: np.ndarray, test: np.ndarray, test_logits, w, b, dim: int):
    u = -np.linalg.pinv(w) @ b
    x = train - u
    vals, vecs = np.linalg.eigh(x.T @ x / len(x))
    ns = vecs[:, np.argsort(-vals)[dim:]]
    alpha = train_logits.max(1).mean() / np.linalg.norm(x @ ns, axis=1).mean()
    vlogit = np.linalg.norm((test - u) @ ns, axis=1) * alpha
    energy = np.log(np.exp(test_logits).sum(1))
    return u, -(energy - vlogit)


def test_origin_and_score_match_numpy() -> None:
    feats, y, w, b = toy_features(n=80)
    det = ViMDetector(weight=w, bias=b).fit_features(feats, y)
    test, _, _, _ = toy_features(n=10, seed=4)
    test["logits"] = test["features"] @ w.T + b
    u, ref = _numpy_vim(
        *(t.double().numpy() for t in (feats["features"], feats["logits"], test["features"], test["logits"], w, b)), 8
    )
    np.testing.assert_allclose(det.origin.numpy(), u, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(det.score_features(test).image_score.numpy(), ref, rtol=1e-3, atol=1e-3)
    assert det.null_space.shape == (16, 8)  # D = 16 < 768 -> principal dim D / 2


def test_principal_dim_rule() -> None:
    assert [default_principal_dim(d) for d in (16, 512, 768, 2047, 2048, 1)] == [8, 256, 512, 512, 1000, 1]


def test_streaming_equals_one_shot_bounded_and_roundtrip() -> None:
    feats, _y, w, b = toy_features(n=80)
    one = ViMDetector(weight=w, bias=b).fit_features(feats)
    stream = fit_in_batches(ViMDetector(weight=w, bias=b), feats, None, size=9)
    assert_same_state(one, stream, atol=1e-4)
    big, _, _, _ = toy_features(n=800)
    assert buffer_shapes(ViMDetector(weight=w, bias=b, fit_sample_size=100).fit_features(big)) == buffer_shapes(one)
    fresh = roundtrip(one, lambda: ViMDetector(weight=w, bias=b))
    torch.testing.assert_close(fresh.score_features(feats).image_score, one.score_features(feats).image_score)


def test_residual_off_principal_space_raises_score() -> None:
    feats, _, w, b = toy_features(n=80)
    det = ViMDetector(weight=w, bias=b).fit_features(feats)
    f, logits = feats["features"][:5], feats["logits"][:5]
    v = det.null_space[:, 0]
    side = torch.sign((f - det.origin) @ v)[:, None]
    off = f + 3.0 * side * v  # move away from the principal space; logits held fixed to isolate the residual term
    base = det.score_features({"features": f, "logits": logits}).image_score
    moved = det.score_features({"features": off, "logits": logits}).image_score
    assert float(det.alpha) > 0
    assert (moved > base).all()
    torch.testing.assert_close(moved - base, det.alpha * (det.residual_norm(off) - det.residual_norm(f)))


def test_loader_fit_equals_fit_features() -> None:
    # the residual basis is unique only up to a rotation (the untrained net's features are rank-deficient):
    # compare the residual projector, alpha and the scores instead of the raw basis
    a, b = assert_loader_fit_equals_fit_features(lambda m: ViMDetector(model=m), compare_state=False)
    pa, pb = a.null_space @ a.null_space.T, b.null_space @ b.null_space.T
    torch.testing.assert_close(pa, pb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=1e-3, atol=0.0)
