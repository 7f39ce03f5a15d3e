"""GradNorm: closed form vs autograd (medood.detectors.gradnorm)."""

from __future__ import annotations

import torch
from torch import nn

from medood.detectors import GradNormDetector
from tests.detectors.posthoc_utils import toy_features


def _autograd_gradnorm(feats: torch.Tensor, w: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    fc = nn.Linear(w.shape[1], w.shape[0])
    fc.weight.data.copy_(w)
    fc.bias.data.copy_(b)
    out = []
    for f in feats:
        fc.zero_grad()
        logp = torch.log_softmax(fc(f[None]) / temperature, dim=1)
        c = w.shape[0]
        kl = (torch.full_like(logp, 1.0 / c) * (torch.log(torch.tensor(1.0 / c)) - logp)).sum()  # KL(u || p)
        kl.backward()
        out.append(fc.weight.grad.abs().sum())
    return torch.stack(out)


def test_closed_form_matches_autograd() -> None:
    feats, _, w, b = toy_features(n=8)
    for t in (1.0, 3.0):
        det = GradNormDetector(weight=w, bias=b, temperature=t)
        closed = -det.score_features({"features": feats["features"]}).image_score
        torch.testing.assert_close(closed, _autograd_gradnorm(feats["features"], w, b, t), rtol=1e-4, atol=1e-5)


def test_official_sum_loss_is_c_times_kl_version() -> None:
    feats, _, w, b = toy_features(n=4)
    c = w.shape[0]
    fc = nn.Linear(w.shape[1], c)
    fc.weight.data.copy_(w)
    fc.bias.data.copy_(b)
    f = feats["features"][:1]
    (-torch.log_softmax(fc(f), dim=1)).sum().backward()  # the official code's loss: targets = ones
    ours = -GradNormDetector(weight=w, bias=b).score_features({"features": f, "logits": fc(f).detach()}).image_score
    torch.testing.assert_close(fc.weight.grad.abs().sum(), c * ours[0], rtol=1e-4, atol=1e-5)


def test_confident_large_features_look_more_id() -> None:
    w, b = torch.eye(2), torch.zeros(2)
    det = GradNormDetector(weight=w, bias=b)
    s = det.score_features({"features": torch.tensor([[10.0, 0.0], [0.6, 0.5]])}).image_score
    assert s[1] > s[0]
    assert not det.requires_fit
    assert det.is_fitted
