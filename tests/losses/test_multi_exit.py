"""The multi-exit loss against a hand-written weighted sum of cross-entropies, in both interfaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medood.losses import MECAM_EXIT_WEIGHTS, MultiExitLoss, MultiExitStageLoss


def test_weighted_sum_of_cross_entropies() -> None:
    g = torch.Generator().manual_seed(0)
    exits = [torch.randn(6, 3, generator=g) for _ in range(4)]
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    expected = sum(w * F.cross_entropy(z, y) for w, z in zip(MECAM_EXIT_WEIGHTS, exits))
    torch.testing.assert_close(MultiExitLoss(MECAM_EXIT_WEIGHTS)(exits, y), expected)
    torch.testing.assert_close(MultiExitLoss()(exits, y), sum(F.cross_entropy(z, y) for z in exits))
    torch.testing.assert_close(MultiExitLoss()(exits[0], y), F.cross_entropy(exits[0], y))


def test_stage_interface_runs_the_network() -> None:
    g = torch.Generator().manual_seed(1)
    exits = tuple(torch.randn(4, 3, generator=g) for _ in range(4))
    y = torch.tensor([2, 0, 1, 1])
    loss, out = MultiExitStageLoss()(lambda _x: exits, torch.zeros(4, 1, 8, 8), y)
    torch.testing.assert_close(loss, MultiExitLoss(MECAM_EXIT_WEIGHTS)(exits, y))
    torch.testing.assert_close(out["pred"], exits[-1])
    assert float(out["acc"]) == pytest.approx(float((exits[-1].argmax(1) == y).float().mean()))
    with pytest.raises(ValueError, match="label"):
        MultiExitStageLoss()(lambda _x: exits, torch.zeros(4, 1, 8, 8), None)


@pytest.mark.parametrize("weights", [[], [1.0, -0.5]])
def test_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="weight"):
        MultiExitLoss(weights)


def test_exit_count_must_match_weights() -> None:
    with pytest.raises(ValueError, match="3 exits but 4 weights"):
        MultiExitLoss(MECAM_EXIT_WEIGHTS)([torch.zeros(2, 3)] * 3, torch.tensor([0, 1]))
