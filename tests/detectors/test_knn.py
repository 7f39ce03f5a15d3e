"""Deep nearest neighbours with a bounded bank (medood.detectors.knn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medood.detectors import KNNDetector
from medood.detectors.knn import kth_nn_distance
from tests.detectors.posthoc_utils import assert_same_state, buffer_shapes, fit_in_batches, roundtrip, toy_features


def test_matches_brute_force() -> None:
    feats, _, _, _ = toy_features(n=60)
    test, _, _, _ = toy_features(n=9, seed=3)
    det = KNNDetector(k=5, chunk_size=7).fit_features(feats)
    bank = F.normalize(feats["features"], dim=1)
    q = F.normalize(test["features"], dim=1)
    brute = torch.cdist(q, bank).sort(dim=1).values[:, 4]
    torch.testing.assert_close(det.score_features(test).image_score, brute)
    torch.testing.assert_close(kth_nn_distance(q, bank, 5, chunk_size=4), brute)


def test_bank_is_bounded_and_independent_of_batching() -> None:
    feats, _, _, _ = toy_features(n=200)
    one = KNNDetector(k=3, bank_size=25).fit_features(feats)
    stream = fit_in_batches(KNNDetector(k=3, bank_size=25), feats, None, size=17)
    assert one.bank.shape == (25, 16)
    assert_same_state(one, stream)
    small, _, _, _ = toy_features(n=30)
    assert buffer_shapes(KNNDetector(k=3, bank_size=25).fit_features(small))["bank"] == (25, 16)
    other_seed = KNNDetector(k=3, bank_size=25, seed=1).fit_features(feats)
    assert not torch.equal(other_seed.bank, one.bank)


def test_k_clipped_roundtrip_and_direction() -> None:
    feats, _, _, _ = toy_features(n=20)
    det = KNNDetector(k=50).fit_features(feats)  # k > bank size: clipped to 20
    assert torch.isfinite(det.score_features(feats).image_score).all()
    det = KNNDetector(k=3).fit_features(feats)
    fresh = roundtrip(det, lambda: KNNDetector(k=3))
    torch.testing.assert_close(fresh.score_features(feats).image_score, det.score_features(feats).image_score)
    odd = {"features": torch.eye(16)[:4] * 3}  # one-hot directions unlike the training features
    assert det.score_features(odd).image_score.min() > det.score_features(feats).image_score.max()
