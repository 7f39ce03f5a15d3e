"""NNGuide: energy guided by the nearest confidence-scaled training features (medood.detectors.nnguide)."""

from __future__ import annotations

import numpy as np
import torch

from medood.detectors import NNGuideDetector
from tests.detectors.posthoc_utils import assert_same_state, fit_in_batches, np_logsumexp, roundtrip, toy_features


def test_score_equals_the_paper_formula() -> None:
    feats, _, w, b = toy_features(n=60, d=16, c=3)
    test, _, _, _ = toy_features(n=15, d=16, c=3, seed=2)
    test["logits"] = test["features"] @ w.T + b
    det = NNGuideDetector(k=7, chunk_size=13).fit_features(feats)
    f, q = feats["features"].double().numpy(), test["features"].double().numpy()
    bank = f / np.linalg.norm(f, axis=1, keepdims=True) * np_logsumexp(feats["logits"].numpy())[:, None]
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ bank.T
    guidance = -np.sort(-sims, axis=1)[:, :7].mean(axis=1)
    want = -guidance * np_logsumexp(test["logits"].numpy())
    np.testing.assert_allclose(det.score_features(test).image_score.numpy(), want, rtol=1e-5, atol=1e-5)


def test_bounded_bank_streaming_and_roundtrip() -> None:
    feats, _, _, _ = toy_features(n=80)
    one = NNGuideDetector(k=5, bank_size=30).fit_features(feats)
    assert one.bank.shape == (30, 16), "the bank is capped at bank_size rows"
    assert_same_state(one, fit_in_batches(NNGuideDetector(k=5, bank_size=30), feats, None, size=11))
    f = feats["features"]
    guided = torch.nn.functional.normalize(f, dim=1) * torch.logsumexp(feats["logits"], dim=1)[:, None]
    gap = (one.bank[:, None] - guided[None]).abs().amax(dim=2).amin(dim=1)
    assert gap.max() < 1e-6, "bank rows are guided training rows"
    fresh = roundtrip(one, lambda: NNGuideDetector(k=5, bank_size=30))
    torch.testing.assert_close(fresh.score_features(feats).image_score, one.score_features(feats).image_score)
