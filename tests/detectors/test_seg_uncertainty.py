"""Segmentation uncertainty baselines: voxel entropy (volume / foreground) and seeded MC-dropout variance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from scipy.stats import entropy as scipy_entropy

from medood.detectors.base_featuremap import region_mean
from medood.detectors.mc_dropout import MCDropoutDetector
from medood.detectors.seg_entropy import SegEntropyDetector, voxel_entropy


def test_voxel_entropy_matches_scipy_and_region_means() -> None:
    logits = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(0)) * 3
    h, p = voxel_entropy(logits)
    ref = scipy_entropy(torch.softmax(logits.double(), 1).numpy(), axis=1)
    np.testing.assert_allclose(h.numpy(), ref, rtol=1e-5)
    fg = p.argmax(1) != 0
    expected = torch.stack([h[i][fg[i]].mean() for i in range(2)])
    torch.testing.assert_close(region_mean(h, p, "foreground"), expected)
    torch.testing.assert_close(region_mean(h, p, "volume"), h.flatten(1).mean(1))
    p_bg = torch.zeros_like(p)
    p_bg[:, 0] = 1.0  # no foreground voxel: the whole image
    torch.testing.assert_close(region_mean(h, p_bg, "foreground"), h.flatten(1).mean(1))
    with pytest.raises(ValueError, match="region"):
        region_mean(h, p, "brain")


def test_seg_entropy_on_a_unet_output() -> None:
    net = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    x = torch.randn(3, 1, 16, 16)
    det = SegEntropyDetector(model=net, region="volume", temperature=2.0)
    assert det.is_fitted  # no fitting
    with torch.no_grad():
        expected = voxel_entropy(net(x), 2.0)[0].flatten(1).mean(1)
    torch.testing.assert_close(det.score(x).image_score, expected)
    torch.testing.assert_close(det.score_features({"logits": net(x).detach()}).image_score, expected)


def _unet(dropout: float) -> UNet:
    torch.manual_seed(0)
    return UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0, dropout=dropout).eval()


def test_mc_dropout_uses_own_dropout_seeded_and_matches_brute_force() -> None:
    net, x = _unet(0.3), torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    det = MCDropoutDetector(model=net, n_samples=5, region="volume", seed=3)
    assert det.dropout_layer is None and det._own
    s1, s2 = det.score(x).image_score, det.score(x).image_score
    assert torch.equal(s1, s2), "seeded: the same input gets the same score"
    assert all(not m.training for m in det._own), "dropout modules are back in eval mode"
    expected = []
    for xi in x.split(1):  # each case on its own, the same seeded masks
        with torch.random.fork_rng():
            torch.manual_seed(3)
            for m in det._own:
                m.train()
            probs = torch.stack([torch.softmax(net(xi), 1) for _ in range(5)])
            for m in det._own:
                m.eval()
        expected.append(probs.var(0, unbiased=True).sum(1).flatten(1).mean(1))  # higher variance = higher score
    torch.testing.assert_close(s1, torch.cat(expected), rtol=1e-4, atol=1e-7)
    assert (s1 > 0).all() and det.dropout_source == "model"
    assert not torch.equal(MCDropoutDetector(model=net, n_samples=5, seed=4).score(x).image_score, s1)


def test_mc_dropout_score_of_a_case_does_not_depend_on_its_batch() -> None:
    """The old batched passes gave a case other masks at another batch position (another score)."""
    net, x = _unet(0.3), torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    det = MCDropoutDetector(model=net, n_samples=4, region="foreground")
    alone = torch.cat([det.score(xi).image_score for xi in x.split(1)])
    torch.testing.assert_close(det.score(x).image_score, alone)
    torch.testing.assert_close(det.score(x.flip(0)).image_score, alone.flip(0))


def test_mc_dropout_injects_test_time_dropout_when_the_net_has_none(caplog: pytest.LogCaptureFixture) -> None:
    net, x = _unet(0.0), torch.randn(2, 1, 16, 16)
    with caplog.at_level("WARNING", logger="medood.detectors.mc_dropout"):
        det = MCDropoutDetector(model=net, n_samples=4, p=0.2)
    assert "no active dropout module" in caplog.text, "a host without dropout is said, not silently sampled"
    assert det.dropout_layer is not None and det._target is not None
    assert det.dropout_source == f"test_time:{det.dropout_layer}"
    assert (det.score(x).image_score > 0).all()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b), "the injected dropout hook is removed after scoring"
    with pytest.raises(ValueError, match="no module named"):
        MCDropoutDetector(model=net, dropout_layer="nope")
    with pytest.raises(ValueError, match="n_samples"):
        MCDropoutDetector(model=net, n_samples=1)
