from __future__ import annotations

import torch
from monai.transforms import Compose, RandGaussianNoised

from medood.data.tokens import augmented_copies, collect_slices


def _volumes() -> list[torch.Tensor]:
    vol = torch.zeros(1, 8, 8, 6)
    vol[:, 2:6, 2:6, 1:5] = torch.linspace(0.2, 1.0, 4)
    return [vol[None]]


def test_augmented_copies_are_reproducible_and_keep_positions() -> None:
    slices, positions = collect_slices(_volumes(), axis=2, min_foreground=0.1)
    assert slices.shape == (4, 1, 8, 8)

    def aug() -> Compose:
        return Compose([RandGaussianNoised("image", prob=1.0, std=0.1)])

    out, pos = augmented_copies(slices, positions, aug(), copies=2, seed=3)
    assert out.shape == (12, 1, 8, 8)
    torch.testing.assert_close(pos, positions.repeat(3))
    torch.testing.assert_close(out[:4], slices)  # the originals first
    assert not torch.equal(out[4:8], slices) and not torch.equal(out[4:8], out[8:12])  # two different draws
    again, _ = augmented_copies(slices, positions, aug(), copies=2, seed=3)
    assert torch.equal(again, out)  # drawn twice with the same seed: identical
    other, _ = augmented_copies(slices, positions, aug(), copies=2, seed=4)
    assert not torch.equal(other[4:], out[4:])
