"""ODIN: input perturbation and temperature scaling (medood.detectors.odin)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from medood.detectors import ODINDetector


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    return net.eval()


def test_perturbation_matches_hand_gradient_sign() -> None:
    net = _linear_model()
    lin = net[1]
    x = torch.randn(4, 1, 6)
    det = ODINDetector(model=net, temperature=10.0, epsilon=0.01)
    with torch.no_grad():  # must work even under no_grad
        out = det.score(x).image_score
    # for logits = W x + b: d CE(z / T, y) / dx = W^T (softmax(z / T) - onehot(y)) / (T B)
    z = lin(x.flatten(1)).detach()
    p = torch.softmax(z / 10.0, dim=1)
    grad = (p - nn.functional.one_hot(z.argmax(1), 3).float()) @ lin.weight.detach()
    x_pert = x.flatten(1) - 0.01 * torch.where(grad >= 0, 1.0, -1.0)
    expected = -torch.softmax(lin(x_pert).detach() / 10.0, dim=1).amax(dim=1)
    torch.testing.assert_close(out, expected)
    assert all(p.grad is None for p in net.parameters()), "ODIN must not leave gradients on the model"
    # the perturbation raises the top (temperature-scaled) probability
    unperturbed = ODINDetector.scaled_msp(z, 10.0)
    assert (out <= unperturbed + 1e-7).all()


def test_score_features_is_scaled_msp_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    det = ODINDetector()
    logits = torch.tensor([[100.0, 0.0, 0.0]])
    with caplog.at_level(logging.WARNING, logger="medood.detectors.odin"):
        s1 = det.score_features({"logits": logits}).image_score
        det.score_features({"logits": logits})
    assert sum("cannot perturb" in r.message for r in caplog.records) == 1
    expected = -torch.softmax(logits / 100.0, dim=1).amax(1)  # NERO default T = 100
    torch.testing.assert_close(s1, expected)
    assert det.temperature == 100.0
    assert det.epsilon == 0.0005
    with pytest.raises(ValueError, match="model"):
        det.score(torch.zeros(1, 1, 4, 4))
