"""Encoder-stage discovery on MONAI UNet / DynUNet and the toy classifier; the multi-call feature recorder."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import DynUNet, UNet

from medood.networks.feature_maps import FeatureRecorder, encoder_stages, probe_input, trace_feature_maps
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
