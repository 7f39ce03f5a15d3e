"""Random token-grid masks and corruptions used to train the MIM-OOD transformers (seeded by the caller)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["blob_mask", "corrupt_tokens", "maskgit_ratio", "random_mask"]


def random_mask(shape: tuple[int, ...], ratio: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Boolean masks ``(B, h, w)`` with exactly ``round(ratio_b * h * w)`` random positions per grid."""
    b, n = shape[0], int(math.prod(shape[1:]))
    scores = torch.rand(b, n, generator=generator)
    k = (ratio.clamp(0, 1) * n).round().long().clamp(1, n)
    ranks = scores.argsort(1).argsort(1)
    return (ranks < k[:, None]).reshape(shape)


def blob_mask(
    shape: tuple[int, ...], ratio: Tensor, generator: torch.Generator | None = None, max_blobs: int = 8
) -> Tensor:
    """Boolean masks ``(B, h, w)`` of random ellipses covering about ``ratio`` of each grid.

    Ellipses are added until the ratio is reached (at least one, at most ``max_blobs``).

    Anomalies are spatially contiguous, so contiguous masks teach the in-painter to fill holes from their rim.
    """
    b, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    centre = torch.rand(b, max_blobs, 2, generator=generator) * torch.tensor([h, w])
    radius = 1.0 + torch.rand(b, max_blobs, 2, generator=generator) * torch.tensor([h / 4, w / 4])
    dy = (yy[None, None] - centre[..., 0, None, None]) / radius[..., 0, None, None]
    dx = (xx[None, None] - centre[..., 1, None, None]) / radius[..., 1, None, None]
    ellipses = (dy**2 + dx**2) <= 1.0  # (B, M, h, w)
    cumulative = ellipses.cummax(dim=1).values  # union of the first m ellipses
    coverage = cumulative.flatten(2).float().mean(2)  # (B, M)
    enough = coverage >= ratio[:, None]
    first = torch.where(enough.any(1), enough.float().argmax(1), torch.full((b,), max_blobs - 1))
    return cumulative[torch.arange(b), first]


def maskgit_ratio(batch: int, generator: torch.Generator | None = None, min_ratio: float = 0.03) -> Tensor:
    """MaskGIT's cosine schedule: ``r = cos(pi/2 * u)``, ``u ~ U(0, 1)`` (clamped below at ``min_ratio``)."""
    u = torch.rand(batch, generator=generator)
    return torch.cos(math.pi / 2 * u).clamp(min_ratio, 1.0)


def corrupt_tokens(
    tokens: Tensor,
    num_tokens: int,
    clean_prob: float = 0.15,
    max_ratio: float = 0.2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Synthetic token anomalies for the anomalous-token detector.

    Each grid is left clean with probability ``clean_prob``; otherwise a region (contiguous blobs, or scattered
    positions) covering about ``ratio ~ U(0, max_ratio)`` of the grid (a blob can overshoot it) is replaced by one
    of: uniformly random codes; the codes another healthy grid has at the same positions (plausible codes in the
    wrong context); one repeated code (a homogeneous lesion); the grid's own codes shifted by a few positions.

    Returns:
        The corrupted grids and the per-token targets (1 where the token changed).
    """
    b = tokens.shape[0]
    shape = tuple(tokens.shape)
    ratio = torch.rand(b, generator=generator) * max_ratio
    use_blob = torch.rand(b, generator=generator) < 0.7
    region = torch.where(
        use_blob[:, None, None], blob_mask(shape, ratio, generator), random_mask(shape, ratio, generator)
    )
    region &= (torch.rand(b, generator=generator) >= clean_prob)[:, None, None]
    kind = torch.randint(0, 4, (b,), generator=generator)
    uniform = torch.randint(0, num_tokens, shape, generator=generator)
    other = tokens[torch.roll(torch.arange(b), 1)]
    constant = torch.randint(0, num_tokens, (b, 1, 1), generator=generator).expand(shape)
    dy, dx = (int(v) for v in torch.randint(2, 5, (2,), generator=generator))
    shifted = torch.roll(tokens, shifts=(dy, dx), dims=(1, 2))
    replacement = torch.stack([uniform, other, constant, shifted], 0)[kind, torch.arange(b)]
    corrupted = torch.where(region, replacement, tokens)
    return corrupted, (corrupted != tokens).float()
