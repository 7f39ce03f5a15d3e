"""Softmax entropy (medood.detectors.entropy)."""

from __future__ import annotations

import math

import torch

from medood.detectors import EntropyDetector


def test_entropy_hand_values() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e4, -1e4]])
    out = EntropyDetector().score_features({"logits": logits}).image_score
    p = torch.tensor([0.75, 0.25])
    torch.testing.assert_close(out, torch.stack([torch.tensor(math.log(4.0)), -(p * p.log()).sum()]))


def test_uniform_prediction_is_the_most_ood() -> None:
    det = EntropyDetector()
    scores = det.score_features(
        {"logits": torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}
    ).image_score
    assert scores[0] < scores[1] < scores[2]
    assert torch.isfinite(det.score_features({"logits": torch.tensor([[1e4, -1e4, 0.0]])}).image_score).all()
