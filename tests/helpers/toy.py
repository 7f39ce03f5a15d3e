"""Tiny deterministic toy tasks shared by the tests: a blob-position classification task in 2D/3D and a
trained tiny classifier on it. Everything is seeded and CPU-only, and trains in about a second."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

SIZE = 16
NUM_CLASSES = 3


def blob_images(spatial_dims: int, n: int, seed: int, size: int = SIZE) -> tuple[Tensor, Tensor]:
    """``n`` single-channel images ``(n, 1, *[size]*spatial_dims)``: a smooth bright blob whose position
    (one of ``NUM_CLASSES`` places along the first axis) is the class, plus mild noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * spatial_dims, indexing="ij"))
    imgs = []
    for lab in labels.tolist():
        centre = torch.full((spatial_dims,), size / 2.0)
        centre[0] = (lab + 0.5) * size / NUM_CLASSES
        centre = centre + torch.randn(spatial_dims, generator=g) * 0.7
        d2 = ((grid - centre.view(-1, *[1] * spatial_dims)) ** 2).sum(0)
        img = torch.exp(-d2 / (2 * 2.0**2)) + 0.05 * torch.randn(grid.shape[1:], generator=g)
        imgs.append(img)
    return torch.stack(imgs).unsqueeze(1), labels


def ood_images(spatial_dims: int, n: int, seed: int, size: int = SIZE) -> Tensor:
    """Obviously shifted inputs for a *classifier* on the toy task: no blob at all (no class evidence), only
    speckle noise. Post-hoc detectors must score these higher than ID images."""
    g = torch.Generator().manual_seed(seed + 1000)
    shape = (n, 1, *[size] * spatial_dims)
    return 0.1 * torch.rand(shape, generator=g) + 0.15 * (torch.randn(shape, generator=g) > 1.5).float()


def artefact_images(spatial_dims: int, n: int, seed: int, size: int = SIZE) -> Tensor:
    """Obviously shifted inputs for *generative / reconstruction* detectors: ID images with a solid bright
    block (a synthetic "lesion" of intensity 2, twice the brightest healthy tissue) that healthy data never
    contains."""
    x, _ = blob_images(spatial_dims, n, seed=seed + 2000, size=size)
    lo, hi = size // 4, size // 4 + size // 3
    x[(slice(None), slice(None), *[slice(lo, hi)] * spatial_dims)] = 2.0
    return x


class TinyClassifier(nn.Module):
    """conv-relu-conv-relu-GAP-linear; ``fc`` is the head, its input the 16-d penultimate features."""

    def __init__(self, spatial_dims: int, in_channels: int = 1, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.features = nn.Sequential(
            conv(in_channels, 8, 3, padding=1),
            nn.ReLU(),
            conv(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            pool,
            nn.Flatten(),
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@functools.lru_cache(maxsize=4)
def trained_classifier(spatial_dims: int, seed: int = 0) -> TinyClassifier:
    """A TinyClassifier trained (seeded, ~1 s) on ``blob_images``; returned in eval mode."""
    torch.manual_seed(seed)
    net = TinyClassifier(spatial_dims)
    x, y = blob_images(spatial_dims, 96, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def id_loader(spatial_dims: int, n: int = 48, batch_size: int = 16, seed: int = 1) -> list[dict[str, Tensor]]:
    """In-distribution batches ``[{"image", "label"}, ...]`` (a list works as a loader)."""
    x, y = blob_images(spatial_dims, n, seed=seed)
    return [{"image": x[i : i + batch_size], "label": y[i : i + batch_size]} for i in range(0, n, batch_size)]
