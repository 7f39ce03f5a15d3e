"""Synthetic multi-contrast brain MRI subjects built from the real MNI ICBM152 2009a template.

The template and its grey/white-matter probability maps ship inside the nilearn wheel; they are located with
:func:`importlib.util.find_spec` and opened with nibabel (nilearn itself is never imported: that costs seconds).
Each subject is the template anatomy under a smooth random deformation and a radial warp that enlarges or
shrinks the ventricles, rendered into T1w / T2w / FLAIR with the spin-echo and inversion-recovery equations of
:mod:`medood.data.demo.mri_physics`, then given a bias field, gain/contrast jitter and Rician noise. Lesions from
:mod:`medood.data.demo.lesions` are blended into the tissue signal before the scanner effects, so a subject with
and without lesions (same ``seed``) differs only inside the lesions.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from medood.data.demo import lesions as lesion_lib
from medood.data.demo.mri_physics import (
    CONTRASTS,
    PROTOCOLS,
    TISSUES,
    Tissue,
    add_rician_noise,
    signal,
    smooth_field,
)
from medood.data.errors import DataError

__all__ = ["BrainTemplate", "Subject", "load_template", "synthesize_subject", "template_files"]

logger = logging.getLogger(__name__)

_TEMPLATE_NAMES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_SPACING = {"small": 2.0, "full": 1.0}
# Box (MNI mm) that holds the lateral and third ventricles; CSF inside it is the "ventricle" region.
_VENTRICLE_BOX = ((-30.0, 30.0), (-45.0, 30.0), (-5.0, 35.0))
_VENTRICLE_CENTRE_MM = (0.0, -15.0, 14.0)


def template_files() -> dict[str, Path]:
    """Locate the MNI152 2009a files inside the installed nilearn wheel without importing nilearn.

    Returns:
        ``{"t1": path, "gm": path, "wm": path}``.

    Raises:
        DataError: nilearn is not installed or a template file is missing.
    """
    # find_spec locates the package without executing nilearn/__init__.py (importing nilearn.datasets costs ~2 s)
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nilearn", "package not installed", "pip install nilearn; it ships the MNI152 template")
    root = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = {key: root / name for key, name in _TEMPLATE_NAMES.items()}
    for path in paths.values():
        if not path.is_file():
            raise DataError(path, "MNI152 template file missing from the nilearn wheel", "reinstall nilearn>=0.10")
    return paths


@dataclass(frozen=True)
class BrainTemplate:
    """Template anatomy on the output grid.

    Args:
        gm: grey-matter probability, float32.
        wm: white-matter probability, float32.
        mask: brain mask as float32 in [0, 1] (resampled partial volume).
        ventricles: float32 indicator of the ventricular CSF.
        affine: voxel-to-RAS+ world affine (mm).
        spacing: isotropic voxel size in mm.
        crop: bounding box (with margin) of the brain; all synthesis happens inside it.
        support: ``mask > 0`` dilated by one voxel (where trilinear interpolation of the maps can be non-zero).
    """

    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    ventricles: np.ndarray
    affine: np.ndarray
    spacing: float
    crop: tuple[slice, ...]
    support: np.ndarray

    @functools.cached_property
    def stack(self) -> np.ndarray:
        """``(X+2, Y+2, Z+2, 4)`` zero-padded float32 stack of mask, gm, wm, ventricles (what subjects warp)."""
        return np.pad(np.stack([self.mask, self.gm, self.wm, self.ventricles], axis=-1), ((1, 1),) * 3 + ((0, 0),))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the output grid."""
        return tuple(self.gm.shape)

    def world_to_voxel(self, xyz: Sequence[float]) -> np.ndarray:
        """Convert a world (mm) position to voxel indices of the output grid."""
        return (np.linalg.inv(self.affine) @ np.array([*xyz, 1.0]))[:3]


def _read_unit(path: Path) -> np.ndarray:
    """Read a uint8 template volume as float32 in [0, 1]."""
    try:
        data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)  # type: ignore[attr-defined]
    except Exception as err:  # nibabel raises many types for corrupt files
        raise DataError(path, f"cannot read the template ({err})", "reinstall nilearn") from err
    return data / 255.0


def _downsample(volume: np.ndarray, factor: int) -> np.ndarray:
    """Anti-aliased decimation by an integer factor (voxel ``i`` of the output sits on input voxel ``factor*i``)."""
    if factor == 1:
        return volume
    smooth = ndi.gaussian_filter(volume, sigma=0.4 * factor, mode="constant")
    return np.ascontiguousarray(smooth[tuple(slice(None, None, factor) for _ in range(volume.ndim))])


def _ventricle_mask(csf: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """CSF (p > 0.5) inside the central ventricle box, cleaned of specks."""
    ijk = np.indices(csf.shape, dtype=np.float32).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *csf.shape)
    box = np.ones(csf.shape, dtype=bool)
    for axis, (lo, hi) in enumerate(_VENTRICLE_BOX):
        box &= (xyz[axis] > lo) & (xyz[axis] < hi)
    vent = (csf > 0.5) & box
    labels, n = ndi.label(vent)
    if n == 0:
        return vent.astype(np.float32)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1
    return np.isin(labels, keep).astype(np.float32)


@functools.lru_cache(maxsize=2)
def load_template(size: str = "small") -> BrainTemplate:
    """Load (and cache) the MNI152 anatomy on the demo grid.

    Args:
        size: ``"small"`` (2 mm, 99x117x95) or ``"full"`` (1 mm, 197x233x189). Defaults to ``"small"``.

    Returns:
        The template.

    Raises:
        ValueError: unknown size.
        DataError: template files missing or unreadable.
    """
    if size not in _SPACING:
        raise ValueError(f"size must be one of {sorted(_SPACING)}, got {size!r}")
    paths = template_files()
    factor = int(_SPACING[size])
    affine = nib.load(str(paths["t1"])).affine.copy()  # type: ignore[attr-defined]
    mask = _downsample((_read_unit(paths["t1"]) > 0).astype(np.float32), factor)
    gm = _downsample(_read_unit(paths["gm"]), factor)
    wm = _downsample(_read_unit(paths["wm"]), factor)
    affine[:3, :3] *= factor
    total = np.clip(gm + wm, 1.0, None)  # keep gm + wm <= 1
    gm, wm = gm / total, wm / total
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    ventricles = _ventricle_mask(csf, affine)
    idx = np.argwhere(mask > 0.05)
    margin = int(np.ceil(6.0 / _SPACING[size]))
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    logger.debug("MNI152 template at %s mm: shape %s, crop %s", _SPACING[size], mask.shape, crop)
    support = ndi.binary_dilation(mask > 0, structure=np.ones((3, 3, 3), dtype=bool))
    return BrainTemplate(gm, wm, mask, ventricles, affine, _SPACING[size], crop, support)


@dataclass
class Subject:
    """One synthetic subject on the template grid.

    Args:
        images: contrast name -> float32 volume (0 outside the brain).
        brainmask: uint8 brain mask.
        lesion: uint8 lesion mask (all zero for healthy subjects).
        lesion_type: lesion kind or ``"none"``.
        affine: voxel-to-world affine.
        params: the sampled subject parameters (for provenance/debugging).
    """

    images: dict[str, np.ndarray]
    brainmask: np.ndarray
    lesion: np.ndarray
    lesion_type: str
    affine: np.ndarray
    params: dict[str, float] = field(default_factory=dict)


def _rng(seed: int | Sequence[int], stream: int) -> np.random.Generator:
    """Independent generator for one random stream of one subject."""
    key = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    return np.random.default_rng([*key, stream])


def _warp_coords(tpl: BrainTemplate, rng: np.random.Generator, params: dict[str, float]) -> np.ndarray:
    """Sampling coordinates (3, *crop) = identity + smooth random displacement + radial ventricle warp."""
    shape = tuple(s.stop - s.start for s in tpl.crop)
    disp_sd = params["deform_mm"] / tpl.spacing
    n_ctrl = tuple(max(3, round(n * tpl.spacing / 35.0)) for n in shape)
    coords = np.stack([smooth_field(shape, n_ctrl, rng, sd=disp_sd) for _ in range(3)])
    centre = tpl.world_to_voxel(_VENTRICLE_CENTRE_MM)
    sigma = 20.0 / tpl.spacing
    axes = [np.arange(s.start, s.stop, dtype=np.float32) for s in tpl.crop]
    rel = [a - np.float32(c) for a, c in zip(axes, centre)]
    gauss = [np.exp(-0.5 * (r / sigma) ** 2).astype(np.float32) for r in rel]
    falloff = gauss[0][:, None, None] * gauss[1][None, :, None] * gauss[2][None, None, :]  # separable Gaussian
    # Sampling from closer to the centre enlarges the ventricles (positive scale) and vice versa.
    scale = np.float32(params["ventricle_scale"])
    for axis in range(3):
        view: list[slice | None] = [None, None, None]
        view[axis] = slice(None)
        coords[axis] += axes[axis][tuple(view)] - scale * rel[axis][tuple(view)] * falloff
    return coords


def _trilinear(padded: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a channels-last stack at ``points`` (3, N); zero outside.

    Args:
        padded: ``(X+2, Y+2, Z+2, C)`` stack with one voxel of zero padding on each side.
        points: voxel coordinates of the unpadded grid.

    Returns:
        ``(N, C)`` float32 values. One gather of the 8 corner rows serves every channel, which is faster than
        one :func:`scipy.ndimage.map_coordinates` call per channel.
    """
    dims = padded.shape[:3]
    pts = np.stack([np.clip(p + 1.0, 0.0, n - 1.001) for p, n in zip(points, dims)])
    base = np.floor(pts).astype(np.intp)
    frac = (pts - base).astype(np.float32)
    weights = ((1.0 - frac[0], frac[0]), (1.0 - frac[1], frac[1]), (1.0 - frac[2], frac[2]))
    flat = padded.reshape(-1, padded.shape[-1])
    strides = (dims[1] * dims[2], dims[2], 1)
    origin = base[0] * strides[0] + base[1] * strides[1] + base[2]
    out = np.zeros((points.shape[1], padded.shape[-1]), dtype=np.float32)
    for i, j in np.ndindex(2, 2):
        wxy = weights[0][i] * weights[1][j]
        row = origin + (i * strides[0] + j * strides[1])
        for k in range(2):
            out += np.take(flat, row + k, axis=0) * (wxy * weights[2][k])[:, None]
    return out


def _anatomy(tpl: BrainTemplate, rng: np.random.Generator, params: dict[str, float]) -> dict[str, np.ndarray]:
    """Deformed tissue maps (crop region): gm, wm, csf, mask (bool), ventricles (bool)."""
    coords = _warp_coords(tpl, rng, params)
    # Trilinear interpolation is non-zero only next to the template brain: interpolate there only.
    nearest = tuple(np.clip(np.rint(c), 0, n - 1).astype(np.intp) for c, n in zip(coords, tpl.shape))
    inside = tpl.support[nearest]
    values = _trilinear(tpl.stack, coords[:, inside])
    maps = np.zeros((*inside.shape, values.shape[1]), dtype=np.float32)
    maps[inside] = values
    mask = maps[..., 0] >= 0.5
    gm = maps[..., 1] * mask
    wm = maps[..., 2] * mask
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    ventricles = (maps[..., 3] >= 0.5) & mask
    return {"gm": gm, "wm": wm, "csf": csf, "mask": mask, "ventricles": ventricles}


def _sample_params(rng: np.random.Generator) -> dict[str, float]:
    """Subject-level random parameters."""
    return {
        "deform_mm": float(rng.uniform(1.5, 3.5)),
        "ventricle_scale": float(rng.uniform(-0.2, 0.3)),
        "tissue_jitter": float(rng.uniform(0.02, 0.05)),
    }


def _render(
    vox: dict[str, np.ndarray],
    tissues: dict[str, Tissue],
    layers: list[tuple[np.ndarray, Tissue, np.ndarray | float]],
    contrast: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, float]]:
    """Render one contrast on the brain voxels: tissue mix, lesions, gain/contrast, bias field, noise.

    Args:
        vox: 1-D tissue probabilities of the brain voxels (``gm``, ``wm``, ``csf``) and ``mask`` (crop, bool).
        tissues: healthy tissue parameters.
        layers: ``(weight, tissue, texture)`` of each lesion layer, weights/textures 1-D over the brain voxels.
        contrast: key of :data:`PROTOCOLS`.
        rng: generator of this contrast's scanner effects.

    Returns:
        1-D float32 intensities of the brain voxels and the sampled scanner parameters.
    """
    protocol = PROTOCOLS[contrast]
    img = np.zeros(vox["gm"].shape, dtype=np.float32)
    for name, tissue in tissues.items():
        img += vox[name] * np.float32(signal(tissue, protocol))
    # The reference level comes from the healthy image so that lesions change nothing outside themselves.
    ref = max(float(np.percentile(img, 95)) if img.size else 1.0, 1e-6)
    for weight, tissue, texture in layers:
        img += weight * (np.float32(signal(tissue, protocol)) * texture - img)
    gain = float(np.exp(rng.normal(0.0, 0.12)))
    gamma = float(np.exp(rng.normal(0.0, 0.06)))
    noise_frac = float(rng.uniform(0.01, 0.035))
    img = np.float32(ref) * (np.clip(img, 0.0, None) / np.float32(ref)) ** np.float32(gamma)
    img *= np.exp(smooth_field(vox["mask"].shape, 4, rng, sd=0.12)[vox["mask"]]) * np.float32(gain)
    img = add_rician_noise(img, noise_frac * ref * gain, rng)
    return img, {f"{contrast}_gain": gain, f"{contrast}_gamma": gamma, f"{contrast}_noise": noise_frac}


def _flatten_layers(
    layers: list[lesion_lib.LesionLayer], inside: np.ndarray
) -> list[tuple[np.ndarray, Tissue, np.ndarray | float]]:
    """Lesion layers restricted to the brain voxels: ``(weight, tissue, texture)`` with 1-D arrays."""
    out = []
    for layer in layers:
        texture = layer.texture[inside] if isinstance(layer.texture, np.ndarray) else layer.texture
        out.append((layer.weight[inside], layer.tissue, texture))
    return out


def synthesize_subject(
    template: BrainTemplate,
    seed: int | Sequence[int],
    lesion_type: str | None = None,
    lesion_seed: int | Sequence[int] | None = None,
    contrasts: Sequence[str] = CONTRASTS,
) -> Subject:
    """Synthesise one subject; the same ``seed`` with and without lesions gives the same healthy anatomy and noise.

    Args:
        template: from :func:`load_template`.
        seed: subject seed (int or sequence of ints); fixes anatomy, scanner effects and noise.
        lesion_type: one of :data:`medood.data.demo.lesions.LESION_KINDS`, or ``None`` / ``"none"`` for healthy.
            Defaults to ``None``.
        lesion_seed: seed of the lesion placement. Defaults to ``seed``.
        contrasts: contrasts to render (keys of :data:`~medood.data.demo.mri_physics.PROTOCOLS`).
            Defaults to T1w, T2w and FLAIR.

    Returns:
        The subject, on the full template grid.

    Raises:
        ValueError: unknown lesion type or contrast.
    """
    unknown = [c for c in contrasts if c not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown contrast(s) {unknown}; expected some of {sorted(PROTOCOLS)}")
    params = _sample_params(_rng(seed, 0))
    anat = _anatomy(template, _rng(seed, 1), params)
    kind = "none" if lesion_type is None else lesion_type
    layers = lesion_lib.make_lesions(
        kind, anat, template.spacing, _rng(seed if lesion_seed is None else lesion_seed, 2)
    )
    lesion = np.zeros(anat["mask"].shape, dtype=bool)
    for layer in layers:
        lesion |= layer.weight >= 0.5
    tissue_rng = _rng(seed, 3)
    tissues = {name: t.jittered(tissue_rng, params["tissue_jitter"]) for name, t in TISSUES.items()}
    inside = anat["mask"]
    vox = {"gm": anat["gm"][inside], "wm": anat["wm"][inside], "csf": anat["csf"][inside], "mask": inside}
    flat_layers = _flatten_layers(layers, inside)
    images: dict[str, np.ndarray] = {}
    for contrast in contrasts:
        stream = 10 + sorted(PROTOCOLS).index(contrast)  # a contrast's noise does not depend on which others are made
        values, info = _render(vox, tissues, flat_layers, contrast, _rng(seed, stream))
        params.update(info)
        full = np.zeros(template.shape, dtype=np.float32)
        full[template.crop][inside] = values
        images[contrast] = full
    return Subject(
        images=images,
        brainmask=_uncrop(anat["mask"].astype(np.uint8), template),
        lesion=_uncrop(lesion.astype(np.uint8), template),
        lesion_type=kind,
        affine=template.affine.copy(),
        params=params,
    )


def _uncrop(volume: np.ndarray, tpl: BrainTemplate) -> np.ndarray:
    """Embed a crop-region volume in a zero volume of the full grid."""
    out = np.zeros(tpl.shape, dtype=volume.dtype)
    out[tpl.crop] = volume
    return out
