"""nearest_neighbours: exact (checked against brute force), grouped, chunked, ties and empty groups."""

from __future__ import annotations

import pytest
import torch

from medood.utils.neighbours import nearest_neighbours


def brute_force(q: torch.Tensor, bank: torch.Tensor, qg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    out = []
    for i in range(q.shape[0]):
        best, best_j = float("inf"), -1
        for j in range(bank.shape[0]):
            if qg[i] != bg[j]:
                continue
            d = float(((q[i].double() - bank[j].double()) ** 2).sum().sqrt())
            if d < best:
                best, best_j = d, j
        out.append(best_j)
    return torch.tensor(out)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_matches_brute_force_with_groups(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(37, 5, generator=g), torch.randn(23, 5, generator=g)
    bg, qg = torch.randint(0, 3, (37,), generator=g), torch.randint(0, 3, (23,), generator=g)
    idx, dist = nearest_neighbours(q, bank, qg, bg, chunk_size=chunk)
    torch.testing.assert_close(idx, brute_force(q, bank, qg, bg))
    assert (bg[idx] == qg).all()
    torch.testing.assert_close(dist, (q - bank[idx]).norm(dim=1), atol=1e-5, rtol=1e-5)


def test_without_groups_is_the_global_nearest() -> None:
    g = torch.Generator().manual_seed(1)
    bank, q = torch.randn(50, 8, generator=g), torch.randn(11, 8, generator=g)
    idx, _ = nearest_neighbours(q, bank, chunk_size=4)
    torch.testing.assert_close(idx, torch.cdist(q.double(), bank.double()).argmin(1))


def test_ties_go_to_the_lowest_index_across_chunks() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    idx, dist = nearest_neighbours(torch.zeros(1, 2), bank, chunk_size=1)
    assert idx.tolist() == [0] and dist.tolist() == [1.0]
    idx, _ = nearest_neighbours(torch.tensor([[0.9, 0.1]]), bank, torch.tensor([1]), torch.tensor([0, 0, 1, 1]), 2)
    assert idx.tolist() == [2]  # the first same-group row, not the globally nearest row 0


def test_query_whose_group_is_absent_gets_minus_one() -> None:
    idx, dist = nearest_neighbours(torch.zeros(2, 3), torch.ones(4, 3), torch.tensor([0, 5]), torch.zeros(4).long())
    assert idx.tolist() == [0, -1]
    assert torch.isinf(dist[1])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="share D"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="empty"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="both"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(4, 3), query_groups=torch.zeros(2))
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(4, 3), chunk_size=0)
