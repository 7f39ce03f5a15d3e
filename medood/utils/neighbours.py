"""Exact nearest-neighbour search in bounded memory, optionally restricted to rows of the same group (class).

Used to pick, for an auxiliary out-of-distribution image, the in-distribution training image with the same
predicted class whose features are closest (the heatmap method's target). The search is exact (no
approximation): queries and bank are cut into ``chunk_size`` blocks and a running minimum is kept, so memory is
``O(chunk_size**2)`` whatever the bank size.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nearest_neighbours"]


def _check(queries: Tensor, bank: Tensor, query_groups: Tensor | None, bank_groups: Tensor | None) -> None:
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        shapes = f"{tuple(queries.shape)}, {tuple(bank.shape)}"
        raise ValueError(f"queries (N, D) and bank (M, D) must share D, got {shapes}")
    if bank.shape[0] == 0:
        raise ValueError("the bank is empty: no in-distribution features to search")
    if (query_groups is None) != (bank_groups is None):
        raise ValueError("give both query_groups and bank_groups, or neither")
    if query_groups is not None and bank_groups is not None:
        if query_groups.shape != (queries.shape[0],) or bank_groups.shape != (bank.shape[0],):
            raise ValueError("query_groups must be (N,) and bank_groups (M,)")


@torch.no_grad()
def nearest_neighbours(
    queries: Tensor,
    bank: Tensor,
    query_groups: Tensor | None = None,
    bank_groups: Tensor | None = None,
    chunk_size: int = 2048,
) -> tuple[Tensor, Tensor]:
    """Index and Euclidean distance of each query's nearest bank row (of the same group when groups are given).

    Args:
        queries: ``(N, D)`` query features.
        bank: ``(M, D)`` features to search.
        query_groups: ``(N,)`` integer group of each query (e.g. its predicted class). Defaults to ``None``.
        bank_groups: ``(M,)`` integer group of each bank row. Defaults to ``None``.
        chunk_size: rows per block of queries and of the bank. Defaults to 2048.

    Returns:
        ``(indices (N,) long, distances (N,) float)``; a query whose group has no bank row gets index ``-1``
        and distance ``inf``. Ties go to the lowest bank index.

    Raises:
        ValueError: shapes do not match, the bank is empty, or only one of the group tensors is given.
    """
    _check(queries, bank, query_groups, bank_groups)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    queries, bank = queries.double(), bank.double()  # exact ordering of nearly equal distances
    best_d, best_i = [], []
    for qs in range(0, queries.shape[0], chunk_size):
        q = queries[qs : qs + chunk_size]
        dmin = torch.full((q.shape[0],), float("inf"), dtype=torch.float64, device=q.device)
        imin = torch.full((q.shape[0],), -1, dtype=torch.long, device=q.device)
        for bs in range(0, bank.shape[0], chunk_size):
            d = torch.cdist(q, bank[bs : bs + chunk_size], compute_mode="donot_use_mm_for_euclid_dist")
            if query_groups is not None and bank_groups is not None:
                same = query_groups[qs : qs + chunk_size, None] == bank_groups[None, bs : bs + chunk_size]
                d = d.masked_fill(~same.to(d.device), float("inf"))
            dc, ic = d.min(dim=1)
            better = dc < dmin  # strict: an earlier block wins ties
            dmin = torch.where(better, dc, dmin)
            imin = torch.where(better, ic + bs, imin)
        best_d.append(dmin)
        best_i.append(imin)
    return torch.cat(best_i), torch.cat(best_d).float()
