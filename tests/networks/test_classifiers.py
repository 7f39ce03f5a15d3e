"""build_classifier: MONAI 2D / 3D classifiers whose last linear layer is the head post-hoc detectors hook."""

from __future__ import annotations

import pytest
import torch

from medood.networks import find_linear_head
from medood.networks.classifiers import ARCHS, build_classifier


@pytest.mark.parametrize("arch", ["resnet10", "densenet_small"])
def test_classifier_head_is_found(arch: str) -> None:
    net = build_classifier(arch, 4)
    name, head = find_linear_head(net)
    assert name == ("fc" if arch == "resnet10" else "class_layers.out")
    assert head.out_features == 4
    if arch == "resnet10":
        assert head.in_features == 128


# every architecture in 2D; in 3D all but the widest (slow, and the same code path as resnet18_small)
SHAPE_CASES = [(a, 2) for a in sorted(ARCHS)] + [(a, 3) for a in sorted(ARCHS) if a != "resnet18"]


@pytest.mark.parametrize(("arch", "spatial_dims"), SHAPE_CASES)
def test_shape_2d_and_3d(arch: str, spatial_dims: int) -> None:
    net = build_classifier(arch, num_classes=2, in_channels=1, spatial_dims=spatial_dims).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *[16] * spatial_dims))
    assert out.shape == (2, 2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        build_classifier("vgg")
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_classifier(num_classes=1)
    with pytest.raises(ValueError, match="spatial_dims"):
        build_classifier(spatial_dims=1)
