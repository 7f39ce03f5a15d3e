"""Encoder-stage discovery on every network family of the MONAI model zoo and the toy classifier; the input an
inferer feeds the network; the multi-call feature recorder."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import DynUNet, UNet

from medood.networks.feature_maps import (
    FeatureRecorder,
    encoder_stages,
    first_network_input,
    probe_input,
    trace_feature_maps,
)
from tests.helpers.toy import TinyClassifier


@pytest.mark.parametrize("sd", [2, 3])
def test_toy_classifier_stages_skip_global_pooling(sd: int) -> None:
    net = TinyClassifier(sd)
    assert encoder_stages(net) == ["features.1", "features.3"]
    assert encoder_stages(net, n=1) == ["features.3"]
    assert probe_input(net).shape == (1, 1, *([64] * sd if sd == 2 else [32] * 3))


def test_unet_stages_are_the_bottom_block_and_the_levels_above() -> None:
    net = UNet(3, 1, 2, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1)
    names = encoder_stages(net, n=3)
    assert names == ["model.0", "model.1.submodule.0", "model.1.submodule.1.submodule.1.submodule"]
    records = {r.name: r for r in trace_feature_maps(net, probe_input(net))}
    assert records[names[-1]].channels == 32 and records[names[-1]].spatial == (4, 4, 4)


def test_dynunet_in_plane_strides() -> None:
    net = DynUNet(
        3, 1, 4, kernel_size=[3] * 4, strides=[1, [2, 2, 1], [2, 2, 1], [2, 2, 1]],
        upsample_kernel_size=[[2, 2, 1]] * 3, filters=[4, 8, 16, 32],
    )  # fmt: skip
    assert encoder_stages(net) == ["downsamples.1", "bottleneck"]
    assert encoder_stages(net, example=torch.zeros(1, 1, 16, 16, 1)) == ["downsamples.1", "bottleneck"]
    with pytest.raises(ValueError, match="n must"):
        encoder_stages(net, n=0)


def test_recorder_keeps_every_sliding_window_call() -> None:
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    rec = FeatureRecorder(net, {"bottom": "model.1.submodule", "out": ""})
    with torch.no_grad():
        SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=1, overlap=0)(torch.randn(1, 1, 32, 16), net)
    calls = rec.pop_calls()
    assert [t.shape for t in calls["bottom"]] == [torch.Size([1, 8, 8, 8])] * 2
    assert [t.shape for t in calls["out"]] == [torch.Size([1, 2, 16, 16])] * 2
    assert rec.pop_calls() == {}
    rec.remove()


def _family(name: str) -> tuple[torch.nn.Module, tuple[int, ...], list[str]]:
    """A tiny network of a model-zoo family, its input shape and the stages expected."""
    from monai.networks import nets

    if name == "UNet-2d":
        net: torch.nn.Module = UNet(2, 1, 4, channels=(4, 8, 16), strides=(2, 2), num_res_units=2)
        return net, (1, 1, 32, 32), ["model.0", "model.1.submodule.1.submodule"]
    if name == "SegResNet-3d":
        net = nets.SegResNet(3, init_filters=8, in_channels=4, out_channels=3)
        return net, (1, 4, 16, 16, 16), ["down_layers.2", "down_layers.3"]
    if name == "DynUNet-3d":
        net = DynUNet(3, 1, 2, kernel_size=[3] * 3, strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 16])
        return net, (1, 1, 16, 16, 16), ["downsamples.0", "bottleneck"]
    if name == "SwinUNETR-2d":
        net = nets.SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2)
        return net, (1, 1, 64, 64), ["swinViT.layers3.0", "swinViT.layers4.0"]
    if name == "UNETR-3d":
        net = nets.UNETR(1, 2, img_size=(32, 32, 32), feature_size=4, hidden_size=48, mlp_dim=96, num_heads=4)
        return net, (1, 1, 32, 32, 32), ["encoder4:input", "decoder5:input"]
    if name == "BasicUNet-3d":
        net = nets.BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4))
        return net, (1, 1, 32, 32, 32), ["down_3", "down_4"]
    if name == "FlexibleUNet-2d":
        net = nets.FlexibleUNet(3, 2, "efficientnet-b0", spatial_dims=2, pretrained=False)
        return net, (1, 3, 64, 64), ["encoder._blocks.5.11._bn0", "encoder._blocks.6"]
    if name == "DenseNet121-2d":
        net = nets.DenseNet121(spatial_dims=2, in_channels=4, out_channels=4)
        return net, (1, 4, 32, 32), ["features.transition2.conv", "features.transition3.conv"]
    if name == "ResNet18-3d":
        net = nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=2)
        return net, (1, 1, 32, 32, 32), ["layer3", "layer4"]
    net = nets.SEResNet50(spatial_dims=2, in_channels=3, num_classes=2)
    return net, (1, 3, 32, 32), ["layer2", "layer3"]


FAMILIES = ["UNet-2d", "SegResNet-3d", "DynUNet-3d", "SwinUNETR-2d", "UNETR-3d", "BasicUNet-3d", "FlexibleUNet-2d",
            "DenseNet121-2d", "ResNet18-3d", "SEResNet50-2d"]  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_every_model_zoo_family_has_channel_first_encoder_stages(family: str) -> None:
    """The stages of each network family the model zoo uses are found, and hooking them gives channel-first maps
    that shrink with depth (never a Swin block's channel-last tensor, never a decoder block)."""
    net, shape, expected = _family(family)
    net.eval()
    x = torch.randn(shape)
    names = encoder_stages(net, example=x)
    assert names == expected
    rec = FeatureRecorder(net, names)
    with torch.no_grad():
        net(x)
    calls = rec.pop_calls()
    rec.remove()
    maps = [calls[n][0] for n in names]
    assert all(len(calls[n]) == 1 and m.ndim == x.ndim for n, m in zip(names, maps))
    sizes = [m.shape[2:].numel() for m in maps]
    assert sizes[0] >= sizes[-1] and sizes[-1] < x.shape[2:].numel(), "shallower first, deeper than the input"
    convs = {m.out_channels for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))}
    if not family.startswith("UNETR"):  # the ViT's hidden size is not a convolution's
        assert all(m.shape[1] in convs for m in maps), "dim 1 is a convolution's channel count: channel-first"


def test_first_network_input_is_what_the_inferer_feeds() -> None:
    from monai.inferers import SimpleInferer, SliceInferer

    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    volume = torch.randn(1, 1, 40, 36, 5)
    assert first_network_input(SliceInferer(roi_size=(16, 16), spatial_dim=2, sw_batch_size=1), net, volume).shape == (
        1, 1, 16, 16,
    )  # fmt: skip
    image = torch.randn(1, 1, 40, 36)
    assert first_network_input(SlidingWindowInferer((16, 16), sw_batch_size=3), net, image).shape == (3, 1, 16, 16)
    assert first_network_input(SimpleInferer(), net, image) is image
    assert not any(m._forward_hooks for m in net.modules())
