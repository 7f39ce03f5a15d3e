"""Random 2D slices of 3D volumes, with the normalised slice coordinate, for slice-wise models."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils.type_conversion import convert_to_tensor
from torch import Tensor

__all__ = ["RandSlices", "RandSlicesd", "foreground_extent", "slice_positions"]


def foreground_extent(volume: Tensor, axis: int) -> tuple[int, int]:
    """First and last index along spatial ``axis`` of a ``(C, *S)`` volume holding any non-zero voxel.

    Returns ``(0, n - 1)`` for an all-zero volume.
    """
    nz = volume.reshape(volume.shape[0], *volume.shape[1:]).abs().amax(0)  # (*S)
    dims = tuple(d for d in range(nz.ndim) if d != axis)
    profile = nz.amax(dim=dims) > 0 if dims else nz > 0
    idx = torch.nonzero(profile).flatten()
    if idx.numel() == 0:
        return 0, int(nz.shape[axis]) - 1
    return int(idx[0]), int(idx[-1])


def slice_positions(volume: Tensor, axis: int) -> Tensor:
    """Normalised coordinate in ``[-0.5, 0.5]`` of every slice along ``axis``, relative to the foreground.

    The brain's lowest slice is -0.5, its highest +0.5; slices outside are clipped.

    Using the foreground rather than the field of view makes the coordinate comparable across subjects
    whatever the cropping (as the slice conditioning of the LSR / MIM-OOD pipelines needs).
    """
    lo, hi = foreground_extent(volume, axis)
    n = int(volume.shape[1 + axis])
    idx = torch.arange(n, dtype=torch.float32)
    return ((idx - lo) / max(hi - lo, 1) - 0.5).clamp(-0.5, 0.5)


class RandSlices(Randomizable, Transform):
    """Sample ``num_samples`` 2D slices ``(C, *S without axis)`` along ``axis`` from a ``(C, *S)`` volume.

    Only slices whose foreground (non-zero) fraction is at least ``min_foreground`` are drawn (all slices if
    none qualifies). Returns a list of ``(slice, position)``.

    Args:
        num_samples: slices per volume. Defaults to 8.
        axis: spatial axis (2 = axial after ``Orientationd("RAS")``). Defaults to 2.
        min_foreground: minimum fraction of non-zero voxels in a slice. Defaults to 0.05.
        uniform: take evenly spaced eligible slices instead of random ones (repeatable validation).
            Defaults to False.
    """

    def __init__(
        self, num_samples: int = 8, axis: int = 2, min_foreground: float = 0.05, uniform: bool = False
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.axis, self.min_foreground = num_samples, axis, min_foreground
        self.uniform = uniform
        self._idx: np.ndarray = np.zeros(0, dtype=int)

    def candidates(self, volume: Tensor) -> Tensor:
        """Indices of the slices eligible for sampling."""
        fg = (volume.abs().amax(0) > 0).float().movedim(self.axis, 0).reshape(volume.shape[1 + self.axis], -1)
        ok = torch.nonzero(fg.mean(1) >= self.min_foreground).flatten()
        return ok if ok.numel() else torch.arange(fg.shape[0])

    def randomize(self, data: Tensor) -> None:
        """Draw the slice indices (with replacement when there are fewer candidates than samples)."""
        cand = self.candidates(data).numpy()
        if self.uniform:
            self._idx = cand[np.linspace(0, len(cand) - 1, self.num_samples).round().astype(int)]
            return
        replace = len(cand) < self.num_samples
        self._idx = self.R.choice(cand, size=self.num_samples, replace=replace)

    def __call__(self, img: Tensor, randomize: bool = True) -> list[tuple[Tensor, float]]:
        """Return ``num_samples`` ``(slice, position)`` pairs."""
        vol = convert_to_tensor(img, track_meta=False)
        if randomize:
            self.randomize(vol)
        pos = slice_positions(vol, self.axis)
        return [(vol.select(1 + self.axis, int(i)).clone(), float(pos[int(i)])) for i in self._idx]


class RandSlicesd(Randomizable, MapTransform):
    """Dictionary version of :class:`RandSlices`: returns ``num_samples`` dicts (MONAI multi-sample style).

    The same slice indices are used for every key; the position goes to ``position_key``. Other keys are
    copied unchanged (metadata-free tensors), so a list of dicts feeds a DataLoader directly.

    Args:
        keys: volume keys to slice.
        num_samples: slices per volume. Defaults to 8.
        axis: spatial axis. Defaults to 2.
        min_foreground: minimum non-zero fraction of the first key's slices. Defaults to 0.05.
        position_key: where the slice coordinate goes. Defaults to ``"position"``.
        uniform: evenly spaced instead of random slices. Defaults to False.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_samples: int = 8,
        axis: int = 2,
        min_foreground: float = 0.05,
        position_key: str = "position",
        uniform: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.sampler = RandSlices(num_samples, axis, min_foreground, uniform)
        self.position_key = position_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandSlicesd:
        """Seed the sampler too."""
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state)
        return self

    def randomize(self, data: Tensor) -> None:
        """Draw the slice indices from the first key's volume."""
        self.sampler.randomize(data)

    def __call__(self, data: Mapping[Hashable, Tensor]) -> list[dict[Hashable, Tensor]]:  # type: ignore[override]
        """Slice every key at the same indices."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        first = convert_to_tensor(d[keys[0]], track_meta=False)
        self.randomize(first)
        out: list[dict[Hashable, Tensor]] = [{} for _ in range(self.sampler.num_samples)]
        for key in keys:
            pairs = self.sampler(convert_to_tensor(d[key], track_meta=False), randomize=False)
            for item, (sl, pos) in zip(out, pairs):
                item[key] = sl
                item[self.position_key] = torch.tensor(pos, dtype=torch.float32)
        for item in out:
            for k, v in d.items():
                if k not in item and not isinstance(v, (torch.Tensor, np.ndarray)):
                    item[k] = v
        return out
