"""Closed-form last-layer LRP-0 relevance (medood.relevance.lrp)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.relevance import last_layer_relevance


def test_hand_computed_two_by_three() -> None:
    # C = 2 classes, D = 3 neurons, one sample
    a = torch.tensor([[1.0, 2.0, 0.5]])
    w = torch.tensor([[1.0, -1.0, 2.0], [0.5, 1.0, -2.0]])
    b = torch.tensor([0.5, -1.0])
    # z_0 = 1 - 2 + 1 + 0.5 = 0.5 ; z_1 = 0.5 + 2 - 1 - 1 = 0.5 -> p = (0.5, 0.5)
    # R_j = 0.5 * a'_j W'_{0j} / 0.5 + 0.5 * a'_j W'_{1j} / 0.5 = a'_j (W'_{0j} + W'_{1j})
    expected = torch.tensor([[1.0 * 1.5, 2.0 * 0.0, 0.5 * 0.0, 1.0 * -0.5]])
    torch.testing.assert_close(last_layer_relevance(a, w, b, eps=0.0), expected)


def test_matches_explicit_loops_and_conserves() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 4, generator=g) * 3
    w, b = torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    rel = last_layer_relevance(a, w, b, eps=0.0).double().numpy()
    an, wn, bn = a.double().numpy(), w.double().numpy(), b.double().numpy()
    z = an @ wn.T + bn
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    a1, w1 = np.c_[an, np.ones(5)], np.c_[wn, bn]
    ref = np.zeros((5, 5))
    for i in range(5):
        for c in range(3):
            for j in range(5):
                ref[i, j] += p[i, c] * a1[i, j] * w1[c, j] / z[i, c]
    np.testing.assert_allclose(rel, ref, rtol=1e-4, atol=1e-5)
    assert np.abs(z).min() > 0.05, "test data must keep logits away from zero for exact conservation"
    np.testing.assert_allclose(rel.sum(1), p.sum(1), rtol=1e-4)  # sum_j R_j = sum_c p_c = 1


def test_given_logits_set_the_output_relevance() -> None:
    a = torch.tensor([[1.0, 1.0]])
    w, b = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2)
    logits = torch.tensor([[0.0, 100.0]])  # p = (0, 1): only class 1 contributes
    rel = last_layer_relevance(a, w, b, logits=logits, eps=0.0)
    torch.testing.assert_close(rel, torch.tensor([[0.0, 1.0, 0.0]]))


def test_zero_logit_is_stabilised() -> None:
    a = torch.tensor([[1.0, -1.0]])
    w, b = torch.tensor([[1.0, 1.0], [2.0, 0.0]]), torch.zeros(2)  # z_0 = 0 exactly
    rel = last_layer_relevance(a, w, b)
    assert torch.isfinite(rel).all()
    with pytest.raises(ValueError, match="weight"):
        last_layer_relevance(torch.ones(2, 3), w, b)
