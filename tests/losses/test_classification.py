"""MultiExitLoss: a weighted sum of a per-exit loss over the exits of a multi-exit classifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medood.losses.classification import MultiExitLoss


def test_weighted_sum_over_exits() -> None:
    g = torch.Generator().manual_seed(0)
    exits = [torch.randn(5, 3, generator=g, requires_grad=True) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 1, 0])
    ce = nn.functional.cross_entropy
    expected = 0.2 * ce(exits[0], y) + 0.3 * ce(exits[1], y) + 0.5 * ce(exits[2], y)
    value = MultiExitLoss([0.2, 0.3, 0.5])(exits, y)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in exits), "every exit gets a gradient"
    torch.testing.assert_close(MultiExitLoss()(tuple(exits), y), sum(ce(z, y) for z in exits))
    torch.testing.assert_close(MultiExitLoss()(exits[0], y), ce(exits[0], y)), "a tensor is one exit"
    smooth = MultiExitLoss(loss=nn.CrossEntropyLoss(label_smoothing=0.1))(exits[:1], y)
    torch.testing.assert_close(smooth, ce(exits[0], y, label_smoothing=0.1))


def test_bad_weights() -> None:
    with pytest.raises(ValueError, match="2 exits but 3 weights"):
        MultiExitLoss([1, 1, 1])([torch.zeros(2, 3), torch.zeros(2, 3)], torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        MultiExitLoss([1, -1])
    with pytest.raises(ValueError, match="none"):
        MultiExitLoss([])
