"""The heatmap stage loss against a hand computation of the official weighted residual loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medood.losses import HeatmapLoss, weighted_residual_loss


def test_weighted_residual_loss_by_hand() -> None:
    x = torch.tensor([[[0.5, 0.0]], [[1.0, 1.0]]])  # (B=2, C=1, W=2)
    h = torch.tensor([[[0.1, -0.2]], [[0.0, -0.5]]])
    t = torch.tensor([[[0.5, -1.0]], [[1.0, 0.0]]])
    # item 0: (1+2.5)*0.1^2 + (1+5)*0.8^2 = 0.035 + 3.84; item 1: 0 + 1*0.5^2 = 0.25
    expected = (0.035 + 3.84 + 0.25) / 2
    assert weighted_residual_loss(x, h, t, weight=5.0).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="shapes differ"):
        weighted_residual_loss(x, h[:, :, :1], t)


class Echo(nn.Module):
    """A 'decoder' returning a learnable constant residual, to check what the loss feeds it."""

    def __init__(self) -> None:
        super().__init__()
        self.h = nn.Parameter(torch.zeros(1, 1, 4))
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.seen = (z, y)
        return self.h.expand(z.shape[0], 1, 4)


def test_loss_feeds_the_precomputed_features_and_trains_the_decoder() -> None:
    net = Echo()
    x, t = torch.zeros(3, 1, 4), torch.ones(3, 1, 4)
    feats, pred = torch.rand(3, 5), torch.tensor([[2], [0], [1]])
    loss, out = HeatmapLoss(weight=0.0)(net, x, {"target": t, "features": feats, "pred": pred})
    assert net.seen is not None
    torch.testing.assert_close(net.seen[0], feats)
    assert net.seen[1].tolist() == [2, 0, 1]  # (B, 1) collated labels become (B,) class indices
    assert loss.item() == pytest.approx(4.0)  # 4 pixels of (0 + 0 - 1)^2 per item
    loss.backward()
    assert net.h.grad is not None and torch.all(net.h.grad < 0)  # pushes h towards t - x = 1
    assert out["pred"].shape == (3, 1, 4)
    with pytest.raises(ValueError, match="batch keys"):
        HeatmapLoss()(net, x, {"target": t})
    with pytest.raises(ValueError, match=">= 0"):
        HeatmapLoss(weight=-1.0)


def test_loss_weight_in_the_official_range_weights_dark_and_bright_alike() -> None:
    """(1 + 5|t|): with [0, 1] images a dark target pixel weighs 1 and a bright one 6; the official [-1, 1] range
    (``input_range=(0, 1)``) gives both the weight 6 (and mid-grey 1)."""
    x, h = torch.full((1, 1, 3), 0.5), torch.zeros(1, 1, 3)
    t = torch.tensor([[[0.0, 1.0, 0.5]]])
    # [0, 1]: errors (x - t)^2 = 0.25, 0.25, 0 with weights 1, 6, 3.5
    assert weighted_residual_loss(x, h, t).item() == pytest.approx(0.25 * 1 + 0.25 * 6)
    # [-1, 1]: x = 0, t = -1, 1, 0: errors 1, 1, 0 with weights 6, 6, 1
    assert weighted_residual_loss(x, h, t, input_range=(0.0, 1.0)).item() == pytest.approx(6 + 6)
    dark, bright = (
        weighted_residual_loss(x[..., :1], h[..., :1], t[..., i : i + 1], input_range=(0, 1)) for i in (0, 1)
    )
    assert dark.item() == pytest.approx(bright.item())
    net = Echo()
    feats, pred = torch.rand(1, 5), torch.tensor([0])
    loss, _ = HeatmapLoss(input_range=(0.0, 1.0))(
        net, torch.zeros(1, 1, 4), {"target": torch.ones(1, 1, 4), "features": feats, "pred": pred}
    )
    assert loss.item() == pytest.approx(4 * 6 * 4.0)  # x = -1, t = 1: (1 + 5) * 2^2 per pixel
    with pytest.raises(ValueError, match="hi > lo"):
        HeatmapLoss(input_range=(1.0, 1.0))
