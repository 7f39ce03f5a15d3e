"""Synthetic brain lesions with exact masks: tumour with oedema, MS-like plaques, hyper-/hypo-intense blobs.

A lesion is a list of :class:`LesionLayer` objects: a soft partial-volume weight map (1 inside, a linear ramp of
about 1.5 mm across the border, 0 beyond one voxel outside the ``w >= 0.5`` region), the lesion tissue (relaxation
parameters) and a multiplicative texture. :mod:`medood.data.demo.brain` blends each layer into the tissue signal as
``signal = (1 - w) * signal + w * lesion_signal * texture``. The ground-truth mask is the union of ``w >= 0.5``.
Weights are multiplied by the (deformed) brain mask, so no lesion ever leaves the brain.

Kinds (:data:`LESION_KINDS`):

* ``tumour``: lobulated core (thresholded smooth noise inside an ellipsoid, radius 10-18 mm), half the time with a
  contrast-enhancing rim (bright on T1w), inside an irregular oedema (up to ~1.7x the core, mostly in white
  matter): core dark on T1w, oedema bright on T2w and FLAIR.
* ``ms``: 4-9 small ovoid periventricular white-matter plaques (radius 3-7 mm) with BrainWeb's MS-lesion tissue:
  bright on T2w/FLAIR, slightly dark on T1w.
* ``hyper_large`` / ``hypo_large``: one lobulated lesion of radius 15-30 mm, bright (resp. dark) on every contrast.
* ``hyper_small`` / ``hypo_small``: 2-4 lesions of radius 3-8 mm, bright (resp. dark) on every contrast.

Radii are in mm and independent of the voxel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from medood.data.demo.mri_physics import LESION_TISSUES, Tissue, smooth_field

__all__ = ["LESION_KINDS", "LesionLayer", "make_lesions"]

LESION_KINDS: tuple[str, ...] = ("tumour", "ms", "hyper_large", "hypo_large", "hyper_small", "hypo_small")

_EDGE_MM = 1.5  # width of the soft border ramp
_TISSUE_JITTER = 0.05


@dataclass
class LesionLayer:
    """One blended lesion component.

    Args:
        weight: float32 partial-volume weight in [0, 1], shape of the synthesis region.
        tissue: relaxation parameters of the lesion tissue.
        texture: multiplicative signal texture (scalar or array broadcastable to ``weight``).
        name: component name (``"oedema"``, ``"core"``, ...).
    """

    weight: np.ndarray
    tissue: Tissue
    texture: np.ndarray | float
    name: str


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random 3-D rotation (QR of a Gaussian matrix, sign-corrected)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _box(centre: np.ndarray, extent: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices of a cube of half-width ``extent`` around ``centre``, clipped to ``shape``."""
    lo = np.maximum(np.floor(centre - extent).astype(int), 0)
    hi = np.minimum(np.ceil(centre + extent).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _ellipsoid_distance(box: tuple[slice, ...], centre: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid distance (1 on the surface) on the voxels of ``box``."""
    grid = np.indices(tuple(s.stop - s.start for s in box), dtype=np.float32)
    rel = grid + np.array([s.start for s in box], dtype=np.float32).reshape(3, 1, 1, 1) - centre.reshape(3, 1, 1, 1)
    local = np.tensordot(rot.T.astype(np.float32), rel, axes=1)
    return np.sqrt(np.sum((local / radii.reshape(3, 1, 1, 1)) ** 2, axis=0))


def _soft(level: np.ndarray, radius_vox: float, edge_vox: float) -> np.ndarray:
    """Weight 1 inside ``level < 1``, 0 outside, with a linear ramp of ``edge_vox`` voxels; 0.5 on the surface."""
    return np.clip(0.5 + (1.0 - level) * radius_vox / edge_vox, 0.0, 1.0).astype(np.float32)


def _blob(
    shape: tuple[int, ...],
    centre: np.ndarray,
    radii_vox: np.ndarray,
    rng: np.random.Generator,
    lobulation: float,
    edge_vox: float,
    scales: tuple[float, ...] = (1.0,),
    into: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Lobulated ellipsoid weights (full ``shape``) at several scales of the same shape (nested surfaces).

    The surface is the level set ``d / scale - lobulation * n = 1`` of the ellipsoid distance ``d`` perturbed by
    a smooth noise field ``n`` (the thresholded smooth noise gives an irregular, lobulated outline). Only a box
    around the lesion is computed; with ``into`` the weights are max-combined into those arrays instead of new ones.
    """
    extent = float(radii_vox.max()) * max(scales) * (1.0 + 2.5 * lobulation) + 2.0 * edge_vox + 1.0
    box = _box(centre, extent, shape)
    dist = _ellipsoid_distance(box, centre, radii_vox, _rotation(rng))
    box_shape = dist.shape
    noise = smooth_field(box_shape, tuple(max(3, round(n / max(radii_vox.mean(), 1.0) * 1.5)) for n in box_shape), rng)
    noise /= max(float(noise.std()), 1e-6)
    out = into if into is not None else [np.zeros(shape, dtype=np.float32) for _ in scales]
    for weight, scale in zip(out, scales):
        local = _soft(dist / scale - lobulation * noise, float(radii_vox.mean()) * scale, edge_vox)
        np.maximum(weight[box], local, out=weight[box])
    return out


def _distance_mm(region: np.ndarray, spacing: float) -> np.ndarray:
    """Distance (mm) to the nearest voxel outside ``region``, computed on a grid of about 2 mm.

    That is accurate enough to place lesions and 8x cheaper at 1 mm.
    """
    factor = max(1, round(2.0 / spacing))
    if factor == 1:
        return ndi.distance_transform_edt(region) * spacing
    coarse = ndi.distance_transform_edt(region[::factor, ::factor, ::factor]) * (spacing * factor)
    for axis in range(3):
        coarse = np.repeat(coarse, factor, axis=axis)
    return np.ascontiguousarray(coarse[: region.shape[0], : region.shape[1], : region.shape[2]]).astype(np.float32)


def _pick_centre(candidates: np.ndarray, fallback: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random voxel of ``candidates`` (or of ``fallback`` when there is none), plus a sub-voxel offset."""
    idx = np.flatnonzero(candidates)
    if idx.size == 0:
        idx = np.flatnonzero(fallback)
    flat = idx[rng.integers(idx.size)]
    return np.array(np.unravel_index(flat, candidates.shape), dtype=np.float32) + rng.uniform(-0.3, 0.3, 3)


def _radii(radius_mm: float, spacing: float, rng: np.random.Generator, elong: tuple[float, float]) -> np.ndarray:
    """Ellipsoid radii in voxels: one axis stretched by ``U(*elong)``, the others jittered by +-15 %."""
    factors = np.array([rng.uniform(*elong), rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)])
    return (radius_mm * factors / spacing).astype(np.float32)


def _tissue(name: str, rng: np.random.Generator) -> Tissue:
    return LESION_TISSUES[name].jittered(rng, _TISSUE_JITTER)


def _texture(shape: tuple[int, ...], rng: np.random.Generator, amount: float) -> np.ndarray:
    return (1.0 + amount * smooth_field(shape, 8, rng)).astype(np.float32)


def _tumour(
    anat: dict[str, np.ndarray], edt: np.ndarray, spacing: float, rng: np.random.Generator
) -> list[LesionLayer]:
    """Oedema + optional enhancing rim + necrotic core."""
    mask = anat["mask"]
    radius = float(rng.uniform(10.0, 18.0))
    centre = _pick_centre((anat["wm"] > 0.5) & (edt > 1.3 * radius), edt >= edt.max() * 0.8, rng)
    edge = max(_EDGE_MM / spacing, 0.75)
    radii = _radii(radius, spacing, rng, (1.0, 1.3))
    core, inner = _blob(mask.shape, centre, radii, rng, 0.25, edge, scales=(1.0, 0.65))
    (oedema,) = _blob(mask.shape, centre, radii * 1.7, rng, 0.35, edge)
    oedema *= np.clip(1.5 * anat["wm"] + 0.5 * anat["gm"], 0.0, 1.0)
    oedema = np.maximum(oedema, core)  # the oedema surrounds the core without gaps
    layers = [LesionLayer(oedema * mask, _tissue("oedema", rng), 1.0, "oedema")]
    if rng.random() < 0.5:
        layers.append(LesionLayer(core * mask, _tissue("enhancing_rim", rng), _texture(mask.shape, rng, 0.05), "rim"))
        layers.append(LesionLayer(inner * mask, _tissue("necrotic_core", rng), _texture(mask.shape, rng, 0.1), "core"))
    else:
        layers.append(LesionLayer(core * mask, _tissue("necrotic_core", rng), _texture(mask.shape, rng, 0.1), "core"))
    return layers


def _ms(anat: dict[str, np.ndarray], spacing: float, rng: np.random.Generator) -> list[LesionLayer]:
    """Several small ovoid periventricular white-matter plaques."""
    mask, wm = anat["mask"], anat["wm"]
    vent_dist = _distance_mm(~anat["ventricles"], spacing)
    candidates = (wm > 0.7) & (vent_dist >= 2.0) & (vent_dist <= 12.0)
    weight = np.zeros(mask.shape, dtype=np.float32)
    edge = max(_EDGE_MM / spacing, 0.75)
    for _ in range(int(rng.integers(4, 10))):
        centre = _pick_centre(candidates, wm > 0.7, rng)
        radii = _radii(float(rng.uniform(3.0, 7.0)), spacing, rng, (1.0, 1.0))
        radii[1:] *= rng.uniform(0.5, 0.75)  # ovoid
        _blob(mask.shape, centre, radii, rng, 0.1, edge, into=[weight])
    weight *= np.clip(1.5 * wm + 0.5 * anat["gm"], 0.0, 1.0) * mask
    return [LesionLayer(weight, _tissue("ms", rng), 1.0, "ms")]


def _generic(
    polarity: str, large: bool, anat: dict[str, np.ndarray], edt: np.ndarray, spacing: float, rng: np.random.Generator
) -> list[LesionLayer]:
    """Hyper- or hypo-intense (on every contrast) lesions: one large or 2-4 small ones, mostly in white matter."""
    mask, wm = anat["mask"], anat["wm"]
    weight = np.zeros(mask.shape, dtype=np.float32)
    edge = max(_EDGE_MM / spacing, 0.75)
    count = 1 if large else int(rng.integers(2, 5))
    vent_dist = _distance_mm(~anat["ventricles"], spacing) if large else None
    for _ in range(count):
        radius = float(rng.uniform(15.0, 30.0) if large else rng.uniform(3.0, 8.0))
        ok = (wm > 0.5 if rng.random() < 0.8 else (anat["gm"] + wm) > 0.6) & (edt > 0.7 * radius + 2.0)
        if vent_dist is not None:  # a large mass beside, not on top of, the ventricles
            ok &= vent_dist > 0.6 * radius
        centre = _pick_centre(ok, edt >= edt.max() * 0.8, rng)
        lobulation = 0.35 if large else 0.2
        _blob(mask.shape, centre, _radii(radius, spacing, rng, (1.0, 1.4)), rng, lobulation, edge, into=[weight])
    if not large:  # small lesions sit in parenchyma; a large mass replaces whatever it covers
        weight *= np.clip(1.5 * (wm + anat["gm"]), 0.0, 1.0)
    weight *= mask
    texture = _texture(mask.shape, rng, 0.08) if large else 1.0
    return [LesionLayer(weight, _tissue(polarity, rng), texture, f"{polarity}_{'large' if large else 'small'}")]


def make_lesions(kind: str, anat: dict[str, np.ndarray], spacing: float, rng: np.random.Generator) -> list[LesionLayer]:
    """Build the lesion layers of one kind in a subject's (deformed) anatomy.

    Args:
        kind: one of :data:`LESION_KINDS`, or ``"none"`` (no layers).
        anat: ``{"gm", "wm", "csf": float32, "mask", "ventricles": bool}`` maps of the synthesis region.
        spacing: voxel size in mm.
        rng: random generator (placement, shape, tissue jitter, texture).

    Returns:
        The layers, to be blended in order.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "none":
        return []
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; expected 'none' or one of {list(LESION_KINDS)}")
    if kind == "ms":
        layers = _ms(anat, spacing, rng)
    else:
        edt = _distance_mm(anat["mask"], spacing)
        if kind == "tumour":
            layers = _tumour(anat, edt, spacing, rng)
        else:
            polarity, size = kind.split("_")
            layers = _generic(polarity, size == "large", anat, edt, spacing, rng)
    for layer in layers:
        _trim(layer.weight)
    return layers


def _trim(weight: np.ndarray) -> None:
    """Zero the weight beyond one voxel of the ``w >= 0.5`` core, in place.

    Tissue factors can leave faint (w < 0.5) weight far from the lesion; after trimming, the mask covers everything
    the lesion changes except its one-voxel soft border.
    """
    core = weight >= 0.5
    if not core.any():
        weight[:] = 0.0
        return
    lo = [int(np.flatnonzero(core.any(axis=tuple(a for a in range(3) if a != ax)))[0]) for ax in range(3)]
    hi = [int(np.flatnonzero(core.any(axis=tuple(a for a in range(3) if a != ax)))[-1]) for ax in range(3)]
    box = tuple(slice(max(a - 2, 0), b + 3) for a, b in zip(lo, hi))
    keep = np.zeros(weight.shape, dtype=bool)
    keep[box] = ndi.binary_dilation(core[box], structure=np.ones((3, 3, 3), dtype=bool))
    weight *= keep
