"""DICE: directed sparsification of the last layer (medood.detectors.dice)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.detectors import DICEDetector
from tests.detectors.posthoc_utils import assert_same_state, fit_in_batches, np_logsumexp, roundtrip, toy_features


@pytest.mark.parametrize("p", [90.0, 70.0])
def test_score_equals_the_paper_formula(p: float) -> None:
    feats, _, w, b = toy_features(n=70, d=16, c=4)
    test, _, _, _ = toy_features(n=20, d=16, c=4, seed=5)
    det = DICEDetector(weight=w, bias=b, percentile=p).fit_features(feats)
    wn, bn = w.double().numpy(), b.double().numpy()
    contrib = feats["features"].double().numpy().mean(0)[None, :] * wn
    masked = np.where(contrib > np.percentile(contrib, p), wn, 0.0)
    kept = (100 - p) / 100 * wn.size
    assert np.floor(kept) <= (masked != 0).sum() <= np.ceil(kept), "keeps the top (100 - p) % of the weights"
    want = -np_logsumexp(test["features"].double().numpy() @ masked.T + bn)
    np.testing.assert_allclose(det.score_features(test).image_score.numpy(), want, rtol=1e-5, atol=1e-5)


def test_streaming_fit_and_roundtrip() -> None:
    feats, _, w, b = toy_features(n=50)
    one = DICEDetector(weight=w, bias=b).fit_features(feats)
    assert_same_state(one, fit_in_batches(DICEDetector(weight=w, bias=b), feats, None, size=9))
    fresh = roundtrip(one, lambda: DICEDetector(weight=w, bias=b))
    torch.testing.assert_close(fresh.score_features(feats).image_score, one.score_features(feats).image_score)
    with pytest.raises(ValueError, match="needs the classifier head"):
        DICEDetector()
