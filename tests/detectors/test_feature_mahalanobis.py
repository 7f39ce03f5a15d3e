"""Mahalanobis on pooled feature maps: distances against scikit-learn, shrinkage, pooling, streaming, layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance, ShrunkCovariance

from medood.detectors.feature_mahalanobis import FeatureMahalanobisDetector, pool_features
from tests.detectors.posthoc_utils import assert_same_state, fit_in_batches, roundtrip


def _maps(n: int, c: int = 5, size: int = 6, sd: int = 2, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=torch.Generator().manual_seed(99))
    per_image = torch.randn(n, c, generator=g) @ mix + shift
    return per_image.view(n, c, *[1] * sd) + 0.3 * torch.randn(n, c, *[size] * sd, generator=g)


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_distance_matches_sklearn(shrinkage: float) -> None:
    train, test = _maps(40), _maps(7, seed=1, shift=2.0)
    det = FeatureMahalanobisDetector(layers=["a"], shrinkage=shrinkage).fit_features({"a": train})
    ref = (ShrunkCovariance(shrinkage=shrinkage) if shrinkage else EmpiricalCovariance()).fit(
        pool_features(train).double().numpy()
    )
    expected = ref.mahalanobis(pool_features(test).double().numpy())
    np.testing.assert_allclose(det.score_features({"a": test}).image_score.numpy(), expected, rtol=1e-4)


def test_pooling_shapes_and_errors() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    torch.testing.assert_close(pool_features(x), x.flatten(2).mean(-1))
    assert pool_features(x, 2).shape == (2, 12)
    assert pool_features(torch.ones(2, 3, 4, 4, 4), 2).shape == (2, 24)
    with pytest.raises(ValueError):
        pool_features(torch.ones(2, 3))
    with pytest.raises(ValueError, match="shrinkage"):
        FeatureMahalanobisDetector(layers=["a"], shrinkage=1.5)


def test_multi_layer_streaming_round_trip_and_direction() -> None:
    feats = {"a": _maps(30), "b": _maps(30, c=3, sd=3, size=4, seed=2)}
    make = lambda: FeatureMahalanobisDetector(layers=["a", "b"], combine="normalized")  # noqa: E731
    one = make().fit_features(feats)
    streamed = fit_in_batches(make(), feats, None, 8)
    assert_same_state(one, streamed, atol=1e-8)
    fresh = roundtrip(one, make)
    test = {"a": torch.cat([_maps(4, seed=5), _maps(4, seed=6, shift=3.0)]), "b": _maps(8, c=3, sd=3, size=4, seed=7)}
    scores = fresh.score_features(test)
    assert torch.equal(scores.image_score, one.score_features(test).image_score)
    per_layer = scores.extras["layer_scores"]  # type: ignore[index]
    assert per_layer.shape == (8, 2)
    assert per_layer[4:, 0].min() > per_layer[:4, 0].max(), "shifted features of layer a are farther"
    train_d = one.score_layers(feats).double()
    torch.testing.assert_close(one.layer_mean, train_d.mean(0))  # in-sample statistics of every training image
