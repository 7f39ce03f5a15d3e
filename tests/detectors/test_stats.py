"""Streaming statistics shared by the post-hoc detectors (medood.detectors._stats)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.detectors._stats import ClassSums, RowSampler, RunningMoments, kmeans, top_eigh


def test_running_moments_match_numpy() -> None:
    x = torch.randn(101, 5) * 3 + 100.0  # a large offset: the pairwise merge must stay accurate
    m = RunningMoments()
    for chunk in x.split(13):
        m.update(chunk)
    np.testing.assert_allclose(m.mean.numpy(), x.double().mean(0).numpy(), rtol=1e-10)
    np.testing.assert_allclose(m.covariance().numpy(), np.cov(x.double().numpy().T, ddof=0), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(m.covariance(ddof=1).numpy(), np.cov(x.double().numpy().T), rtol=1e-8, atol=1e-8)


def test_class_sums_grow_and_skip_absent_classes() -> None:
    cs = ClassSums()
    cs.update(torch.ones(2, 3), torch.tensor([0, 0]))
    cs.update(torch.full((1, 3), 4.0), torch.tensor([3]))
    means, present = cs.means()
    assert present.tolist() == [0, 3]
    torch.testing.assert_close(means, torch.tensor([[1.0] * 3, [4.0] * 3], dtype=torch.float64))


def test_row_sampler_bounded_uniform_and_batching_independent() -> None:
    rows = torch.arange(5000, dtype=torch.float32)[:, None]
    labels = torch.arange(5000) % 7
    a, b = RowSampler(300, seed=2), RowSampler(300, seed=2)
    a.update(rows, labels)
    for i in range(0, 5000, 97):
        b.update(rows[i : i + 97], labels[i : i + 97])
    (ra, la), (rb, lb) = a.sample(), b.sample()
    assert ra.shape == (300, 1)
    assert torch.equal(ra, rb)
    assert torch.equal(la, lb)
    assert torch.equal(la, ra[:, 0].long() % 7), "labels must stay with their rows"
    assert len(set(ra[:, 0].tolist())) == 300
    assert 2000 < float(ra.mean()) < 3000  # uniform over 0..4999 has mean 2499.5 (std of the mean ~83)
    small = RowSampler(300)
    small.update(rows[:10])
    assert torch.equal(small.sample()[0], rows[:10])  # holds everything while N <= capacity
    with pytest.raises(ValueError, match="no rows"):
        RowSampler(3).sample()


def test_top_eigh_and_kmeans() -> None:
    vals, vecs = top_eigh(torch.diag(torch.tensor([1.0, 5.0, 3.0])))
    assert vals.tolist() == [5.0, 3.0, 1.0]
    assert torch.equal(vecs.abs().argmax(0), torch.tensor([1, 2, 0]))
    assert (vecs.max(0).values > 0).all()
    x = torch.cat([torch.randn(20, 2) * 0.1, torch.randn(20, 2) * 0.1 + 10])
    c = kmeans(x, 2, seed=0)
    assert sorted(c[:, 0].round().tolist()) == [0.0, 10.0]
    torch.testing.assert_close(kmeans(x, 2, seed=0), c)
