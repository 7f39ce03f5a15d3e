"""HeatmapDecoder: the paper's geometry at 32 / 64 px, any 2D / 3D size, coarser prediction, gradients, TorchScript."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medood.networks.nets.heatmap_decoder import HeatmapDecoder, decoder_geometry

# (out_size, scale) -> (base grid, doublings)
GEOMETRY = [
    ((32, 32), 1, (4, 4), 3),  # CIFAR decoder: 4 -> 8 -> 16 -> 32
    ((64, 64), 1, (4, 4), 4),  # TinyImageNet decoder: 4 -> ... -> 64
    ((28, 28), 1, (4, 4), 3),  # MedMNIST: grown to 32, resized to 28
    ((224, 224), 4, (4, 4), 4),  # 224 px predicted at 56 (grown to 64) and upsampled
    ((40, 48, 40), 2, (3, 3, 3), 3),  # brain bundle: 20 x 24 x 20 predicted on a 24^3 grid
    ((3, 3), 1, (3, 3), 0),
]


@pytest.mark.parametrize(("size", "scale", "base", "n_up"), GEOMETRY)
def test_geometry(size: tuple[int, ...], scale: int, base: tuple[int, ...], n_up: int) -> None:
    assert decoder_geometry(size, scale) == (base, n_up)


SHAPES = [(2, 3, 32, 1), (2, 3, (48, 40), 1), (2, 1, 28, 1), (2, 3, 64, 2), (3, 1, (20, 24, 16), 1), (3, 1, 24, 2)]


@pytest.mark.parametrize(("sd", "channels", "size", "scale"), SHAPES)
def test_output_shape_and_range(sd: int, channels: int, size: int | tuple[int, ...], scale: int) -> None:
    dec = HeatmapDecoder(sd, 10, 4, channels, size, scale=scale, base_channels=4, max_channels=8)
    expected = (size,) * sd if isinstance(size, int) else size
    h = dec(10 * torch.randn(5, 10), torch.tensor([0, 1, 2, 3, 0]))
    assert h.shape == (5, channels, *expected)
    assert h.abs().max() <= 1.0  # tanh, and linear interpolation keeps it inside


def test_channels_follow_the_output_size() -> None:
    small = HeatmapDecoder(2, 8, 2, 3, 32, base_channels=16, max_channels=64)
    large = HeatmapDecoder(2, 8, 2, 3, 64, base_channels=16, max_channels=64)
    widths = [m.out_channels for m in small.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert widths == [64, 64, 32, 16]  # 4 levels for 32 px: 16 * 2**3 capped at 64
    assert len([m for m in large.modules() if isinstance(m, nn.ConvTranspose2d)]) == 5
    assert large.grid == [64, 64] and small.grid == [32, 32]


def test_predicted_class_changes_the_output() -> None:
    dec = HeatmapDecoder(2, 6, 3, 1, 16, base_channels=4).eval()
    z = torch.rand(1, 6)
    assert not torch.allclose(dec(z, torch.tensor([0])), dec(z, torch.tensor([2])))


def test_every_parameter_gets_a_gradient() -> None:
    dec = HeatmapDecoder(3, 6, 2, 1, (8, 12, 8), base_channels=2, max_channels=4)
    dec(torch.rand(3, 6), torch.tensor([0, 1, 1])).pow(2).sum().backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing


def test_torchscript_matches_eager() -> None:
    dec = HeatmapDecoder(2, 6, 3, 3, 20, base_channels=4).eval()
    z, y = torch.rand(2, 6), torch.tensor([1, 2])
    torch.testing.assert_close(torch.jit.script(dec)(z, y), dec(z, y))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        HeatmapDecoder(1, 4, 2, 1, 16)
    with pytest.raises(ValueError, match="channel values"):
        HeatmapDecoder(2, 4, 2, 1, 32, channels=[8, 4])
    with pytest.raises(ValueError, match=">= 1"):
        decoder_geometry((16, 0))
    with pytest.raises(ValueError, match=">= 1"):
        HeatmapDecoder(2, 0, 2, 1, 16)
