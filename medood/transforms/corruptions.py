"""Synthetic corruptions of in-distribution images: auxiliary out-of-distribution data for medical images.

Outlier-exposure methods (e.g. the heatmap decoder) need auxiliary OOD images. The natural-image sets of the
papers (80M Tiny Images, Places365) do not apply to clinical data, so medood derives them from the ID training
images themselves with strong, deterministic corruptions (plus, in the bundles, other organs / modalities):

========== ==================================================================================================
name       what it does (defaults are strong on purpose: an auxiliary OOD image must look unlike ID data)
========== ==================================================================================================
noise      additive Gaussian noise, std drawn in ``std`` (MONAI ``RandGaussianNoise``)
blur       Gaussian blur, sigma in ``sigma`` voxels (MONAI ``RandGaussianSmooth``)
bias       multiplicative smooth field ``exp(a * u)``, ``u`` a ``knots``-per-axis random grid upsampled (cubic)
shuffle    pixels shuffled inside random boxes of about ``box`` of the image (MONAI ``RandCoarseShuffle``)
contrast   gamma far from 1 (``gamma`` or its inverse) on the image's own min-max range
gibbs      k-space truncation ringing (MONAI ``RandGibbsNoise``)
spike      one k-space spike of ``amplitude`` times the DC term: herring-bone stripes (MONAI's
           ``RandKSpaceSpikeNoise`` default intensities barely change an image)
motion     rigid shifts on a random part of the k-space lines: ghosting as from patient motion
stain      RGB only: haematoxylin / eosin / DAB densities rescaled in optical-density space (Ruifrok & Johnston)
========== ==================================================================================================

Every corruption is a pure function of ``(image, name, seed)``, so an auxiliary set is a list of
``{"image": id_path, "corruption": name, "corruption_seed": seed}`` items that gives the same pixels every time it
is loaded (the heatmap method searches the nearest ID neighbour of each auxiliary image once, then trains on it).
Images are ``(C, *spatial)`` in the network's input scale (e.g. ``[0, 1]``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    MapTransform,
    RandCoarseShuffle,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandGibbsNoise,
    Transform,
)
from monai.utils.type_conversion import convert_to_tensor
from torch import Tensor

__all__ = ["CORRUPTIONS", "Corrupt", "Corruptd", "corruption_plan"]

#: Default options of every corruption (override per name with ``Corrupt(options={name: {...}})``).
CORRUPTIONS: dict[str, dict[str, Any]] = {
    "noise": {"std": (0.1, 0.3)},
    "blur": {"sigma": (1.5, 3.0)},
    "bias": {"strength": (0.5, 1.0), "knots": 3},
    "shuffle": {"box": 0.35, "holes": 4},
    "contrast": {"gamma": (2.5, 4.0)},
    "gibbs": {"alpha": (0.7, 0.95)},
    "spike": {"amplitude": (0.1, 0.3)},
    "motion": {"fraction": (0.2, 0.4), "shift": (0.05, 0.12)},
    "stain": {"scale": (0.3, 0.6), "offset": 0.15},
}

# haematoxylin, eosin and DAB optical-density unit vectors (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 2001)
_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_HED = _HED / _HED.norm(dim=1, keepdim=True)


def _draw(rng: np.random.Generator, bounds: Sequence[float] | float) -> float:
    """A uniform draw in ``bounds = (low, high)``; a single number is returned as it is."""
    if isinstance(bounds, (int, float)):
        return float(bounds)
    return float(rng.uniform(float(bounds[0]), float(bounds[1])))


def _seeded(t: Any, seed: int) -> Any:
    t.set_random_state(seed=seed)
    return t


def _motion(img: Tensor, rng: np.random.Generator, fraction: Sequence[float], shift: Sequence[float]) -> Tensor:
    """Magnitude image after shifting the object for a random set of k-space lines along one axis."""
    sd = img.ndim - 1
    pe_axis = int(rng.integers(sd))
    move_axis = (pe_axis + 1 + int(rng.integers(sd - 1))) % sd if sd > 1 else pe_axis
    dims = tuple(range(1, img.ndim))
    k = torch.fft.fftn(img.double(), dim=dims)
    n_lines, n_move = img.shape[1 + pe_axis], img.shape[1 + move_axis]
    lines = torch.from_numpy(rng.random(n_lines) < _draw(rng, fraction))
    d = _draw(rng, shift) * n_move * rng.choice([-1.0, 1.0])
    ramp = torch.exp(-2j * torch.pi * torch.fft.fftfreq(n_move, dtype=torch.float64) * d)
    view = [1] * img.ndim
    view[1 + move_axis] = n_move
    sel = [1] * img.ndim
    sel[1 + pe_axis] = n_lines
    k = torch.where(lines.view(sel), k * ramp.view(view), k)
    return torch.fft.ifftn(k, dim=dims).abs().to(img.dtype)


def _spike(img: Tensor, rng: np.random.Generator, amplitude: Sequence[float]) -> Tensor:
    """Magnitude image after adding one k-space spike (a random mid frequency) of ``amplitude`` x the DC term."""
    dims = tuple(range(1, img.ndim))
    k = torch.fft.fftn(img.double(), dim=dims)
    loc = tuple(int(rng.integers(max(1, s // 8), max(2, s // 2))) * int(rng.choice([-1, 1])) for s in img.shape[1:])
    dc = k.reshape(k.shape[0], -1)[:, 0].abs()
    spike = _draw(rng, amplitude) * dc * np.exp(2j * np.pi * rng.random())
    k[(slice(None), *loc)] += spike
    return torch.fft.ifftn(k, dim=dims).abs().to(img.dtype)


def _bias(x: Tensor, rng: np.random.Generator, strength: Sequence[float], knots: int) -> Tensor:
    """Multiply by a smooth random field ``exp(a * u)``, ``u`` in about ``[-1, 1]``.

    (MONAI's ``RandBiasField`` polynomial reaches factors of 10-1000 in the corners of 3D volumes at useful
    strengths.)
    """
    sd = x.ndim - 1
    grid = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(1, 1, *[knots] * sd))).float()
    mode = "bicubic" if sd == 2 else "trilinear"
    u = torch.nn.functional.interpolate(grid, size=tuple(x.shape[1:]), mode=mode, align_corners=True)[0]
    field = torch.exp(_draw(rng, strength) * u.clamp(-1.0, 1.0))
    if bool((x >= 0).all()):
        return x * field
    return x + (field - 1.0) * x.abs().amax(dim=tuple(range(1, x.ndim)), keepdim=True)  # signed inputs


def _stain(img: Tensor, rng: np.random.Generator, scale: Sequence[float], offset: float) -> Tensor:
    """Rescale the H, E and DAB densities of an RGB image in ``[0, 1]`` (each by ``1 -/+ scale``) and shift them."""
    if img.shape[0] != 3:
        raise ValueError(f"the stain corruption needs RGB images (3 channels), got {img.shape[0]}")
    od = -torch.log(img.double().clamp(1e-4, 1.0)).reshape(3, -1)
    dens = torch.linalg.solve(_HED.T, od)  # od = HED^T @ densities
    s = rng.uniform(float(scale[0]), float(scale[1]), size=3)
    factors = np.where(rng.random(3) < 0.5, 1.0 - s, 1.0 + 2.0 * s)
    dens = dens * torch.from_numpy(factors)[:, None] + torch.from_numpy(rng.uniform(-offset, offset, 3))[:, None]
    out = torch.exp(-(_HED.T @ dens.clamp_min(0.0))).reshape(img.shape)
    return out.clamp(0.0, 1.0).to(img.dtype)


class Corrupt(Transform):
    """Apply a named corruption deterministically: the same ``(image, name, seed)`` gives the same output.

    Args:
        options: per-name overrides of :data:`CORRUPTIONS`, e.g. ``{"noise": {"std": 0.5}}``.
        mask_background: keep voxels that are 0 in every channel at 0 (skull-stripped MRI). Defaults to False.
    """

    def __init__(self, options: Mapping[str, Mapping[str, Any]] | None = None, mask_background: bool = False) -> None:
        unknown = sorted(set(options or {}) - set(CORRUPTIONS))
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; choose from {sorted(CORRUPTIONS)}")
        self.options = {n: {**o, **dict((options or {}).get(n, {}))} for n, o in CORRUPTIONS.items()}
        self.mask_background = mask_background

    def __call__(self, img: Any, name: str, seed: int) -> Tensor:  # type: ignore[override]
        """The corrupted copy of ``img`` ``(C, *spatial)`` (float32; metadata of a MetaTensor is kept)."""
        if name not in self.options:
            raise ValueError(f"unknown corruption {name!r}; choose from {sorted(self.options)}")
        x = convert_to_tensor(img, track_meta=True).float()
        out = self._apply(x, name, int(seed), self.options[name])
        if self.mask_background:
            out = out * (x != 0).any(0, keepdim=True)
        return out.to(torch.float32)

    def _apply(self, x: Tensor, name: str, seed: int, o: dict[str, Any]) -> Tensor:
        rng = np.random.default_rng(seed)
        if name == "noise":
            return _seeded(RandGaussianNoise(prob=1.0, std=_draw(rng, o["std"]), sample_std=False), seed)(x)
        if name == "blur":
            s = tuple(o["sigma"])
            return _seeded(RandGaussianSmooth(sigma_x=s, sigma_y=s, sigma_z=s, prob=1.0), seed)(x)
        if name == "bias":
            return _bias(x, rng, o["strength"], o["knots"])
        if name == "shuffle":  # RandCoarseShuffle shuffles its input's memory in place: give it a copy
            box = [max(1, round(s * o["box"])) for s in x.shape[1:]]
            return _seeded(RandCoarseShuffle(holes=o["holes"], spatial_size=box, prob=1.0), seed)(x.clone())
        if name == "contrast":
            lo = x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
            span = (x.amax(dim=tuple(range(1, x.ndim)), keepdim=True) - lo).clamp_min(1e-6)
            gamma = _draw(rng, o["gamma"])
            gamma = gamma if rng.random() < 0.5 else 1.0 / gamma
            return lo + span * ((x - lo) / span) ** gamma
        if name == "gibbs":
            return _seeded(RandGibbsNoise(prob=1.0, alpha=tuple(o["alpha"])), seed)(x)
        if name == "spike":
            return _spike(x, rng, o["amplitude"])
        if name == "motion":
            return _motion(x, rng, o["fraction"], o["shift"])
        if name == "stain":
            return _stain(x, rng, o["scale"], o["offset"])
        raise ValueError(f"unknown corruption {name!r}")


class Corruptd(MapTransform):
    """Dictionary version of :class:`Corrupt`: the corruption and its seed come from each item.

    Items without ``name_key`` (or with an empty name) pass unchanged, so ID and auxiliary items share one
    pipeline.

    Args:
        keys: image keys to corrupt.
        name_key: item key holding the corruption name. Defaults to ``"corruption"``.
        seed_key: item key holding its seed. Defaults to ``"corruption_seed"``.
        options: per-name overrides of :data:`CORRUPTIONS`.
        mask_background: keep all-zero voxels at 0. Defaults to False.
        allow_missing_keys: don't raise for missing image keys. Defaults to False.
    """

    def __init__(
        self,
        keys: KeysCollection,
        name_key: str = "corruption",
        seed_key: str = "corruption_seed",
        options: Mapping[str, Mapping[str, Any]] | None = None,
        mask_background: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.name_key, self.seed_key = name_key, seed_key
        self.corrupt = Corrupt(options, mask_background)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Corrupt the keyed images of one item (no-op without a corruption name)."""
        d = dict(data)
        name = d.get(self.name_key)
        if not name:
            return d
        seed = int(d.get(self.seed_key, 0))
        for key in self.key_iterator(d):
            d[key] = self.corrupt(d[key], str(name), seed)
        return d


def corruption_plan(
    n_images: int, names: Sequence[str], per_image: int = 1, seed: int = 0
) -> list[tuple[int, str, int]]:
    """``(image index, corruption name, seed)`` for ``per_image`` corrupted copies of each of ``n_images`` images.

    Names are drawn uniformly (seeded) and every copy gets its own seed, so the plan is reproducible.

    Raises:
        ValueError: an unknown name, no names, or ``per_image < 1``.
    """
    unknown = sorted(set(names) - set(CORRUPTIONS))
    if unknown or not names or per_image < 1:
        raise ValueError(f"need per_image >= 1 and names from {sorted(CORRUPTIONS)}, got {list(names)}, {per_image}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(names), size=n_images * per_image)
    seeds = rng.integers(2**31 - 1, size=n_images * per_image)
    return [(i // per_image, names[int(p)], int(s)) for i, (p, s) in enumerate(zip(picks, seeds))]
