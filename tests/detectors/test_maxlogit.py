"""MaxLogit (medood.detectors.maxlogit)."""

from __future__ import annotations

import torch

from medood.detectors import MaxLogitDetector


def test_minus_max_logit() -> None:
    logits = torch.tensor([[1.0, 3.0, -2.0], [-1.0, -0.5, -4.0]])
    torch.testing.assert_close(
        MaxLogitDetector().score_features({"logits": logits}).image_score, torch.tensor([-3.0, 0.5])
    )


def test_higher_for_less_confident_logits() -> None:
    det = MaxLogitDetector()
    confident = det.score_features({"logits": torch.tensor([[8.0, 0.0]])}).image_score
    unsure = det.score_features({"logits": torch.tensor([[0.5, 0.4]])}).image_score
    assert unsure > confident
    assert not det.requires_fit
