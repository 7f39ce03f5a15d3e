"""ReAct: activation clipping + energy, percentile and constant modes (medood.detectors.react)."""

from __future__ import annotations

import numpy as np
import torch

from medood.detectors import ReActDetector
from tests.detectors.posthoc_utils import assert_same_state, buffer_shapes, fit_in_batches, roundtrip, toy_features


def test_percentile_clip_and_score_match_hand_computation() -> None:
    feats, _, w, b = toy_features(n=50)
    det = ReActDetector(weight=w, bias=b).fit_features(feats)
    clip = np.percentile(feats["features"].double().numpy().reshape(-1), 90)
    assert abs(float(det.clip_value) - clip) < 1e-5
    expected = -torch.logsumexp(feats["features"].clamp(max=float(clip)) @ w.T + b, dim=1)
    torch.testing.assert_close(det.score_features(feats).image_score, expected, rtol=1e-5, atol=1e-5)


def test_constant_mode_needs_no_fit() -> None:
    _, _, w, b = toy_features(n=4)
    det = ReActDetector(weight=w, bias=b, clip=0.9)
    assert det.mode == "constant"
    assert det.is_fitted
    f = torch.tensor([[2.0] * 16])
    expected = -torch.logsumexp(torch.full((1, 16), 0.9) @ w.T + b, dim=1)
    torch.testing.assert_close(det.score_features({"features": f}).image_score, expected)


def test_streaming_bounded_sample_and_roundtrip() -> None:
    feats, _, w, b = toy_features(n=50)
    one = ReActDetector(weight=w, bias=b).fit_features(feats)
    stream = fit_in_batches(ReActDetector(weight=w, bias=b), feats, None, size=8)
    assert_same_state(one, stream)
    big, _, _, _ = toy_features(n=500)
    bounded = ReActDetector(weight=w, bias=b, max_fit_values=16 * 100).fit_features(big)
    exact = np.percentile(big["features"].numpy().reshape(-1), 90)
    assert abs(float(bounded.clip_value) - exact) < 0.15, "a 100-row sample should estimate the percentile"
    assert buffer_shapes(bounded) == buffer_shapes(one)
    fresh = roundtrip(one, lambda: ReActDetector(weight=w, bias=b))
    torch.testing.assert_close(fresh.score_features(feats).image_score, one.score_features(feats).image_score)
