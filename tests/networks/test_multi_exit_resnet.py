"""MultiExitResNet: exit shapes in 2D and 3D, argument checks, gradients reach every parameter, and the final
exit's nn.Linear view (FinalExitClassifier) gives the same logits as the network."""

from __future__ import annotations

import pytest
import torch

from medood.networks import FeatureExtractor, find_linear_head
from medood.networks.nets import FinalExitClassifier, MultiExitResNet

TINY = {"layers": (1, 1, 1, 1), "widths": (4, 8, 8, 16), "stem_kernel": 3, "stem_stride": 1, "max_pool": False}

# (spatial_dims, kwargs, input shape, CAM sizes per exit, feature dim)
TEST_CASES = [
    (2, {**TINY}, (2, 1, 16, 16), [16, 8, 4, 2], 16),
    (3, {**TINY}, (2, 1, 16, 16, 16), [16, 8, 4, 2], 16),
    (2, {**TINY, "block": "bottleneck"}, (1, 1, 16, 16), [16, 8, 4, 2], 64),
    (2, {"layers": (1, 1, 1, 1), "widths": (4, 4, 8, 8)}, (1, 1, 64, 64), [16, 8, 4, 2], 8),  # ImageNet stem
    (3, {**TINY, "stem_stride": 2}, (1, 1, 16, 20, 12), [8, 4, 2, 1], 16),
]


@pytest.mark.parametrize(("sd", "kwargs", "shape", "sizes", "dim"), TEST_CASES)
def test_shapes(sd: int, kwargs: dict, shape: tuple[int, ...], sizes: list[int], dim: int) -> None:
    net = MultiExitResNet(sd, in_channels=shape[1], num_classes=5, **kwargs).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        out = net.forward_cams(x)
        logits = net(x)
    assert len(out.cams) == len(logits) == net.num_exits == 4
    for cam, size, z in zip(out.cams, sizes, logits):
        assert cam.shape[:2] == (shape[0], 5)
        assert cam.shape[2] == size, f"CAM spatial size {tuple(cam.shape[2:])}, expected first axis {size}"
        torch.testing.assert_close(z, cam.flatten(2).mean(-1))  # exit logits = GAP of the CAM
    assert out.features.shape == (shape[0], dim) == (shape[0], net.feature_dim)
    torch.testing.assert_close(net.features(x), out.features)


@pytest.mark.parametrize("sd", [2, 3])
def test_final_exit_linear_view_gives_the_same_logits(sd: int) -> None:
    torch.manual_seed(0)
    net = MultiExitResNet(sd, 2, 4, **TINY)
    for p in net.exits.parameters():  # non-trivial exits
        torch.nn.init.normal_(p)
    net.eval()
    view = FinalExitClassifier(net).eval()
    x = torch.rand(3, 2, *[16] * sd)
    with torch.no_grad():
        torch.testing.assert_close(view(x), net(x)[-1], atol=1e-5, rtol=1e-5)
    name, head = find_linear_head(view)
    assert name == "fc"
    assert head.weight.shape == (4, net.feature_dim)
    with FeatureExtractor(view, {"features": "fc:input"}) as fx, torch.no_grad():
        feats = fx(x)
    torch.testing.assert_close(feats["features"], net.features(x))
    assert set(view.state_dict()) == {f"network.{k}" for k in net.state_dict()}, "the view owns no extra state"
    with torch.no_grad():  # the view reads the exit live: a change of the network shows through
        net.exits[-1].bias.add_(1.0)
    torch.testing.assert_close(head.bias, net.exits[-1].bias)


def test_backward_reaches_every_parameter() -> None:
    net = MultiExitResNet(2, 1, 3, **TINY)
    loss = sum(z.logsumexp(1).mean() for z in net(torch.rand(2, 1, 16, 16)))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


def test_traceable() -> None:
    net = MultiExitResNet(2, 1, 3, **TINY).eval()
    x = torch.rand(1, 1, 16, 16)
    traced = torch.jit.trace(net, x)
    with torch.no_grad():
        for a, b in zip(traced(x), net(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"num_classes": 1}, "2 classes"),
        ({"layers": (1, 1, 1)}, "four positive"),
        ({"widths": (4, 0, 8, 8)}, "four positive"),
        ({"block": "wide"}, "block"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"spatial_dims": 2, "in_channels": 1, "num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        MultiExitResNet(**args)
