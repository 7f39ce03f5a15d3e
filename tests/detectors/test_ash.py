"""ASH-S / ASH-B / ASH-P activation shaping (medood.detectors.ash)."""

from __future__ import annotations

import numpy as np
import pytest

from medood.detectors import ASHBDetector, ASHDetector, ASHPDetector
from tests.detectors.posthoc_utils import np_logsumexp, toy_features


def _np_ash(a: np.ndarray, p: float, variant: str) -> np.ndarray:
    out = np.zeros_like(a, dtype=np.float64)
    k = a.shape[1] - int(np.round(a.shape[1] * p / 100))
    for i, row in enumerate(a.astype(np.float64)):
        top = np.argsort(-row)[:k]
        if variant == "b":
            out[i, top] = row.sum() / k
        else:
            out[i, top] = row[top]
            if variant == "s":
                out[i] *= np.exp(row.sum() / row[top].sum())
    return out


@pytest.mark.parametrize(
    ("cls", "variant", "p"), [(ASHDetector, "s", 90), (ASHBDetector, "b", 65), (ASHPDetector, "p", 80)]
)
def test_score_equals_the_paper_formula(cls: type[ASHDetector], variant: str, p: float) -> None:
    feats, _, w, b = toy_features(n=30, d=40, c=4)
    det = cls(weight=w, bias=b, percentile=p)
    assert det.variant == variant
    assert det.is_fitted, "ASH needs no fit"
    shaped = _np_ash(feats["features"].numpy(), p, variant)
    want = -np_logsumexp(shaped @ w.double().numpy().T + b.double().numpy())
    np.testing.assert_allclose(det.score_features(feats).image_score.numpy(), want, rtol=1e-5, atol=1e-5)


def test_variant_argument_and_validation() -> None:
    _, _, w, b = toy_features(n=4)
    assert ASHDetector(weight=w, bias=b, variant="ASH-B").variant == "b"
    with pytest.raises(ValueError, match="variant"):
        ASHDetector(weight=w, bias=b, variant="q")
    with pytest.raises(ValueError, match="percentile"):
        ASHDetector(weight=w, bias=b, percentile=100)
