"""Image-space synthetic anomalies for training anomaly detectors on healthy images (array transforms).

Each transform takes a ``(C, *spatial)`` image (2D slices or 3D volumes) whose background is exactly 0 (a
skull-stripped brain: the brain is where any channel is non-zero) and returns ``(corrupted, mask)``: the corrupted
image (same type, shape and dtype) and a float32 pixel mask ``(1, *spatial)`` of the anomaly (1 inside). The
background stays exactly 0 and every change stays inside the brain. Sizes are in pixels, intensities relative to
the median brain intensity of the image (so they work whatever the intensity scale). Randomness comes only from
MONAI's :class:`~monai.transforms.Randomizable` state: ``set_random_state(seed)`` makes a sequence of draws
repeatable.

How they differ from the demo-data lesion generator (:mod:`medood.data.demo.lesions`), whose lesions the demo test
set holds (training on that generator would be training on the test distribution):

* the demo lesions are **tissue replacements** through an MRI signal model (relaxation parameters of lesion
  tissues, blended as ``(1 - w) * signal + w * lesion_signal * texture``) placed by anatomy (white matter,
  periventricular, away from the ventricles), with **lobulated-ellipsoid** shapes (an ellipsoid level set perturbed
  by smooth noise) and a fixed 1.5 mm linear border ramp;
* these work on intensities only, with no tissue model and no anatomical prior (anywhere in the brain): the
  shapes are **metaballs** (a union of 1-4 Gaussian bumps, thresholded) with a sigmoid border of random softness,
  and the changes are additive shifts, multiplicative scaling, band-limited noise, misplaced real anatomy
  (transplanted patches) and geometric deformation (mass effect), none of which the demo generator produces.

Transforms: :class:`RandBlobIntensity`, :class:`RandLocalIntensityScale`, :class:`RandTexturedNoise`,
:class:`RandPatchTransplant`, :class:`RandMassEffect` (dictionary versions in
:mod:`medood.transforms.anomalies_dict`). Ideas from the self-supervised anomaly literature (foreign patch
interpolation, Tan et al. 2020, https://arxiv.org/abs/2011.04197; natural synthetic anomalies, Schlüter et al.
2022, https://arxiv.org/abs/2109.15222); the code is our own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.transforms import Randomizable, Transform
from monai.utils.type_conversion import convert_data_type, convert_to_dst_type
from scipy import ndimage as ndi

__all__ = [
    "ImageAnomaly",
    "RandBlobIntensity",
    "RandLocalIntensityScale",
    "RandMassEffect",
    "RandPatchTransplant",
    "RandTexturedNoise",
    "metaball",
]

Range = Sequence[float]


def _check_range(name: str, r: Range, low: float = 0.0) -> tuple[float, float]:
    a, b = float(r[0]), float(r[1])
    if not low <= a <= b:
        raise ValueError(f"{name} must be an increasing pair >= {low}, got {tuple(r)}")
    return a, b


def _uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def metaball(
    shape: Sequence[int], centre: np.ndarray, radius: float, rng: np.random.Generator, balls: int, softness: float
) -> np.ndarray:
    """Soft weight in ``[0, 1]`` of a random metaball (union of Gaussian bumps) of about ``radius`` pixels.

    ``balls`` bumps of width ``radius * U(0.4, 0.8)`` are placed around ``centre`` (the first exactly on it, so the
    anomaly always covers ``centre``; the others jittered by ``radius / 2``); the normalised field is thresholded
    at 0.5 with a sigmoid of width ``softness`` (in field units: 0.02 = sharp, 0.15 = very soft).
    The ``w >= 0.5`` region is the anomaly.
    """
    grid = np.indices(tuple(shape), dtype=np.float32)
    field = np.zeros(tuple(shape), dtype=np.float32)
    for i in range(balls):
        jitter = rng.normal(0.0, radius / 2.0, size=len(shape))
        c = centre + (jitter if i > 0 else 0.0)
        s = radius * rng.uniform(0.4, 0.8)
        d2 = sum((grid[i] - c[i]) ** 2 for i in range(len(shape)))
        field = np.maximum(field, np.exp(-d2 / (2.0 * s * s)))
    z = np.clip((field - 0.5) / softness, -30.0, 30.0)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class ImageAnomaly(Randomizable, Transform):
    """Base of the image-space anomaly generators: seeding, brain handling, ``(image, mask)`` output.

    Subclasses implement :meth:`corrupt` on a float32 numpy image. Every call draws a fresh sub-seed from
    ``self.R``; with ``randomize=False`` the previous draw is reused (the dictionary versions corrupt several keys
    identically).

    Args:
        prob: probability of corrupting the image (otherwise it is returned unchanged with an empty mask).
            Defaults to 1.0.
        radius: range of the anomaly radius in pixels. Defaults to ``(3, 12)``.
    """

    def __init__(self, prob: float = 1.0, radius: Range = (3.0, 12.0)) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.prob = prob
        self.radius = _check_range("radius", radius, low=0.5)
        self._do = False
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        """Draw whether to corrupt and the sub-seed of this call."""
        self._do = bool(self.R.rand() < self.prob)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, img: Any, donor: Any = None, randomize: bool = True) -> tuple[Any, Any]:
        """Return ``(corrupted image, float32 mask (1, *spatial))``, both of the input's type."""
        if randomize:
            self.randomize()
        x = convert_data_type(img, np.ndarray, dtype=np.float32)[0]
        brain = np.abs(x).max(0) > 0
        out, mask = x.copy(), np.zeros((1, *x.shape[1:]), dtype=np.float32)
        if self._do and brain.any():
            d = None if donor is None else convert_data_type(donor, np.ndarray, dtype=np.float32)[0]
            rng = np.random.default_rng(self._seed)
            out, m = self.corrupt(x, brain, rng, d)
            out = np.where(brain[None], out, 0.0).astype(np.float32)
            mask[0] = m & brain
        return convert_to_dst_type(out, img)[0], convert_to_dst_type(mask, img, dtype=np.float32)[0]

    def corrupt(
        self, x: np.ndarray, brain: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Corrupt ``x`` (float32 ``(C, *S)``); return the image and the boolean anomaly region ``(*S)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers
    @staticmethod
    def centre_in(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random pixel of ``region`` (float coordinates)."""
        idx = np.flatnonzero(region)
        return np.array(np.unravel_index(int(idx[rng.integers(idx.size)]), region.shape), dtype=np.float32)

    def shape_weight(
        self, brain: np.ndarray, rng: np.random.Generator, softness: tuple[float, float] = (0.02, 0.15)
    ) -> np.ndarray:
        """A metaball weight centred in the brain, 0 outside it."""
        radius, centre = _uniform(rng, self.radius), self.centre_in(brain, rng)
        return metaball(brain.shape, centre, radius, rng, int(rng.integers(1, 5)), _uniform(rng, softness)) * brain

    @staticmethod
    def reference(x: np.ndarray, brain: np.ndarray) -> float:
        """Median brain intensity (the intensity unit of the generators)."""
        return float(np.median(np.abs(x).max(0)[brain])) or 1.0


class RandBlobIntensity(ImageAnomaly):
    """Additive hyper- or hypo-intense metaball with a soft border: ``x + sign * delta * ref * w``.

    Args:
        prob: as :class:`ImageAnomaly`. Defaults to 1.0.
        radius: as :class:`ImageAnomaly`. Defaults to ``(3, 12)``.
        delta: range of the shift in units of the median brain intensity. Defaults to ``(0.15, 0.6)``.
        hyper_prob: probability of a hyper-intense (positive) shift. Defaults to 0.5.
    """

    def __init__(
        self, prob: float = 1.0, radius: Range = (3.0, 12.0), delta: Range = (0.15, 0.6), hyper_prob: float = 0.5
    ) -> None:
        super().__init__(prob, radius)
        self.delta, self.hyper_prob = _check_range("delta", delta), hyper_prob

    def corrupt(
        self, x: np.ndarray, brain: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Shift the intensities under the blob (kept above 2 % of the reference, so the brain stays non-zero)."""
        ref = self.reference(x, brain)
        w = self.shape_weight(brain, rng)
        sign = 1.0 if rng.random() < self.hyper_prob else -1.0
        out = x + sign * _uniform(rng, self.delta) * ref * w[None]
        return np.maximum(out, 0.02 * ref * brain[None]), w >= 0.5


class RandLocalIntensityScale(ImageAnomaly):
    """Multiplicative contrast change under a soft metaball: ``x * (1 + (f - 1) * w)``.

    The factor ``f`` is drawn log-uniformly from ``[1 / max_factor, 1 / min_factor]`` or ``[min_factor,
    max_factor]`` (brighter or darker by at least ``min_factor``).

    Args:
        prob: as :class:`ImageAnomaly`. Defaults to 1.0.
        radius: as :class:`ImageAnomaly`. Defaults to ``(3, 12)``.
        factor: ``(min_factor, max_factor)``, both >= 1. Defaults to ``(1.25, 1.8)``.
    """

    def __init__(self, prob: float = 1.0, radius: Range = (3.0, 12.0), factor: Range = (1.25, 1.8)) -> None:
        super().__init__(prob, radius)
        self.factor = _check_range("factor", factor, low=1.0)

    def corrupt(
        self, x: np.ndarray, brain: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scale the intensities under the blob."""
        w = self.shape_weight(brain, rng, softness=(0.05, 0.2))
        f = float(np.exp(rng.uniform(np.log(self.factor[0]), np.log(self.factor[1]))))
        f = f if rng.random() < 0.5 else 1.0 / f
        return x * (1.0 + (f - 1.0) * w[None]), w >= 0.5


class RandTexturedNoise(ImageAnomaly):
    """Band-limited noise texture added under a soft metaball: ``x + amp * ref * w * n``.

    ``n`` is white noise smoothed with a Gaussian of ``correlation`` pixels, scaled to unit standard deviation.

    Args:
        prob: as :class:`ImageAnomaly`. Defaults to 1.0.
        radius: as :class:`ImageAnomaly`. Defaults to ``(3, 12)``.
        amplitude: range of the noise standard deviation relative to the median brain intensity.
            Defaults to ``(0.1, 0.35)``.
        correlation: range of the noise correlation length in pixels. Defaults to ``(0.5, 2.5)``.
    """

    def __init__(
        self,
        prob: float = 1.0,
        radius: Range = (3.0, 12.0),
        amplitude: Range = (0.1, 0.35),
        correlation: Range = (0.5, 2.5),
    ) -> None:
        super().__init__(prob, radius)
        self.amplitude = _check_range("amplitude", amplitude)
        self.correlation = _check_range("correlation", correlation)

    def corrupt(
        self, x: np.ndarray, brain: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the texture under the blob."""
        ref = self.reference(x, brain)
        w = self.shape_weight(brain, rng)
        white = rng.standard_normal(brain.shape).astype(np.float32)
        noise = ndi.gaussian_filter(white, _uniform(rng, self.correlation))
        noise /= max(float(noise.std()), 1e-6)
        out = x + _uniform(rng, self.amplitude) * ref * (w * noise)[None]
        return np.maximum(out, 0.02 * ref * brain[None]), w >= 0.5


class RandPatchTransplant(ImageAnomaly):
    """Real tissue from elsewhere blended in under a soft metaball: ``(1 - w) * x + w * donor_shifted``.

    A region around a random brain pixel of the donor (another subject or slice; the image itself when none is
    given) is moved onto a random brain pixel of the image, optionally rescaled in intensity, and alpha-blended.
    Where the moved donor has background the image is kept, so the brain never gets holes.

    Args:
        prob: as :class:`ImageAnomaly`. Defaults to 1.0.
        radius: as :class:`ImageAnomaly`. Defaults to ``(3, 12)``.
        intensity: range of the factor applied to the donor patch. Defaults to ``(0.85, 1.2)``.
        min_shift: smallest distance in pixels between the donor and the target location (so the patch is
            misplaced anatomy, not the same place). Defaults to 6.
    """

    def __init__(
        self, prob: float = 1.0, radius: Range = (3.0, 12.0), intensity: Range = (0.85, 1.2), min_shift: float = 6.0
    ) -> None:
        super().__init__(prob, radius)
        self.intensity, self.min_shift = _check_range("intensity", intensity), min_shift

    def corrupt(
        self, x: np.ndarray, brain: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Blend the moved donor region in."""
        d = x if donor is None else donor
        if d.shape != x.shape:
            raise ValueError(f"donor shape {d.shape} differs from the image shape {x.shape}")
        d_brain = np.abs(d).max(0) > 0
        if not d_brain.any():
            return x, np.zeros(brain.shape, dtype=bool)
        target = self.centre_in(brain, rng)
        source = self.centre_in(d_brain, rng)
        for _ in range(10):  # prefer a source far enough from the target
            if np.linalg.norm(source - target) >= self.min_shift:
                break
            source = self.centre_in(d_brain, rng)
        shift = np.round(target - source).astype(int)
        moved = np.roll(d, tuple(int(s) for s in shift), axis=tuple(range(1, d.ndim)))
        moved_brain = np.abs(moved).max(0) > 0
        w = metaball(
            brain.shape, target, _uniform(rng, self.radius), rng, int(rng.integers(1, 5)), _uniform(rng, (0.02, 0.15))
        )
        w = w * brain * moved_brain
        out = (1.0 - w[None]) * x + w[None] * moved * _uniform(rng, self.intensity)
        return out, w >= 0.5


class RandMassEffect(ImageAnomaly):
    """A small radial deformation (mass effect: tissue pushed outward, or pulled inward as in atrophy).

    The displacement is ``u(p) = A * exp(1/2 - r^2 / (2 s^2)) * (p - c) / s`` (``|u|`` peaks at ``A`` pixels for
    ``r = s``), cut to 0 beyond ``r = 3 s``; the centre is chosen at least ``3 s + A`` pixels from the background, so
    no background is moved into the brain. The image is resampled with linear interpolation. The mask is where the
    displacement is at least ``mask_displacement`` pixels.

    Args:
        prob: as :class:`ImageAnomaly`. Defaults to 1.0.
        radius: range of ``s`` in pixels. Defaults to ``(3, 8)``.
        strength: range of ``A`` in pixels. Defaults to ``(1.0, 3.0)``.
        mask_displacement: displacement (pixels) from which a pixel counts as anomalous. Defaults to 1.0.
    """

    def __init__(
        self,
        prob: float = 1.0,
        radius: Range = (3.0, 8.0),
        strength: Range = (1.0, 3.0),
        mask_displacement: float = 1.0,
    ) -> None:
        super().__init__(prob, radius)
        self.strength, self.mask_displacement = _check_range("strength", strength), mask_displacement

    def corrupt(
        self, x: np.ndarray, brain: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Warp the image around a deep brain pixel (no change when the brain is too thin)."""
        a = _uniform(rng, self.strength)
        depth = ndi.distance_transform_edt(brain)
        s = min(_uniform(rng, self.radius), (float(depth.max()) - a) / 3.0)
        if s < 1.0:
            return x, np.zeros(brain.shape, dtype=bool)
        centre = self.centre_in(depth >= min(3.0 * s + a, float(depth.max())), rng)  # min: float rounding
        grid = np.indices(brain.shape, dtype=np.float32)
        rel = grid - centre.reshape(-1, *[1] * brain.ndim)
        r2 = (rel**2).sum(0)
        mag = a * np.exp(0.5 - r2 / (2.0 * s * s)) * (r2 <= 9.0 * s * s)  # |u| = mag * r / s
        sign = 1.0 if rng.random() < 0.5 else -1.0  # sample from closer to the centre = push tissue outward
        coords = grid - sign * mag[None] * rel / s
        out = np.stack([ndi.map_coordinates(ch, coords, order=1, mode="nearest") for ch in x])
        out = np.where((mag > 0)[None], out, x)
        return out, mag * np.sqrt(r2) / s >= self.mask_displacement
