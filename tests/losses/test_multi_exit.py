"""MECAM's stage loss: the weighted multi-exit cross-entropy with the stage interface."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medood.losses import MECAM_EXIT_WEIGHTS, MultiExitStageLoss


def test_stage_interface_runs_the_network_and_weighs_every_exit() -> None:
    g = torch.Generator().manual_seed(1)
    exits = tuple(torch.randn(4, 3, generator=g) for _ in range(4))
    y = torch.tensor([2, 0, 1, 1])
    loss, out = MultiExitStageLoss()(lambda _x: exits, torch.zeros(4, 1, 8, 8), y)
    expected = sum(w * F.cross_entropy(z, y) for w, z in zip((0.25, 0.5, 0.75, 1.0), exits))
    assert MECAM_EXIT_WEIGHTS == (0.25, 0.5, 0.75, 1.0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(out["pred"], exits[-1])
    assert float(out["acc"]) == pytest.approx(float((exits[-1].argmax(1) == y).float().mean()))
    with pytest.raises(ValueError, match="label"):
        MultiExitStageLoss()(lambda _x: exits, torch.zeros(4, 1, 8, 8), None)
