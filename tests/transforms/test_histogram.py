"""Nyul-style histogram standardisation: a shifted histogram goes back onto the learnt landmarks."""

from __future__ import annotations

import pytest
import torch

from medood.transforms import HistogramStandardize, HistogramStandardized, learn_landmarks


def _brain(gen: torch.Generator) -> torch.Tensor:
    x = torch.rand(1, 12, 12, 12, generator=gen) * 0.8 + 0.1
    x[:, :2] = 0  # background
    return x


def test_standardised_histograms_match_the_learnt_landmarks():
    gen = torch.Generator().manual_seed(0)
    train = [_brain(gen) for _ in range(3)]
    landmarks = learn_landmarks(train)
    shifted = train[0].clamp_min(0) ** 2.0 * 3.0  # another contrast curve and scale
    std = HistogramStandardize(landmarks)(shifted)
    assert (std[:, :2] == 0).all() and (std[:, 2:] > 0).all()
    q = torch.quantile(std[std > 0], torch.tensor([0.1, 0.5, 0.9]))
    assert torch.allclose(q, torch.tensor([landmarks[1], landmarks[5], landmarks[9]]), atol=0.02)
    # monotone: the order of brain voxels is kept
    inside = shifted > 0
    assert torch.equal(shifted[inside].argsort(), std[inside].argsort())
    # a hyper-intense outlier stays above the brain (outer slope continued)
    bright = shifted.clone()
    bright[0, 5, 5, 5] = 50.0
    assert HistogramStandardized("image", landmarks)({"image": bright})["image"][0, 5, 5, 5] > landmarks[-1]


def test_bad_landmarks_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        HistogramStandardize([0.0, 0.2, 0.1], (1.0, 50.0, 99.0))
    with pytest.raises(ValueError, match="landmarks"):
        HistogramStandardize([0.1, 0.2], (1.0, 50.0, 99.0))


def test_no_landmarks_is_the_identity():
    x = torch.rand(1, 4, 4, 4)
    assert torch.equal(HistogramStandardize(None)(x), x)
