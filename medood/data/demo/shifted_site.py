"""A shifted-site VALIDATION set: demo brains as another scanner, another population and another pipeline make them.

The demo training / validation / test subjects (:mod:`medood.data.demo.brain`) share one protocol (1.5 T spin-echo
T1w), one anatomy range (smooth deformations of 1.5-3.5 mm, ventricles -20 %..+30 %, no head-size change) and one
skull-strip. The subjects written here differ from them the way a second site's scans do, each shift drawn from
outside the training range:

* **anatomy**: head size and shape (isotropic scale 0.86-0.92 or 1.05-1.08, +-3 % per axis), larger smooth
  deformations (4-6 mm), ventricles shrunk (-40..-25 %) or enlarged (+35..+60 %), patchy cortical atrophy (part of
  the grey matter turned into CSF);
* **contrast**: the tissue maps re-rendered with another sequence (:data:`SITES`: a 3 T MPRAGE-like inversion
  recovery, a short-TR / long-TE spin echo, a 3 T spin echo), 3 T relaxation times (T1 longer);
* **scanner**: a stronger bias field, another noise level (Rician, added at the acquired resolution), the
  acquired voxel size and slice thickness (box-averaged, resampled back to the 2 mm grid with trilinear
  interpolation, as a user's resampling does), a gamma and an arbitrary intensity scale;
* **skull-strip**: left-over non-brain tissue (a bright shell of fat / dura on part of the surface) or
  over-stripped cortex (the mask eroded in patches).

Lesions are drawn so that their connected components span the size buckets ``< 500``, ``500-1500`` and
``> 1500`` voxels (2 mm): small, medium and large lobulated blobs of several tissues, MS-like plaques and
tumours. The mask is exact: ``w >= 0.5`` of the blended lesion weights inside the stripped brain. A lesioned
subject is the lesioned twin of the healthy subject with the same index (same anatomy, scanner draws and noise).

Seeds: ``(seed, 20, i)`` (healthy, and the twins' anatomy) and ``(seed, 21, i)`` (lesions); the demo builder uses
split codes 1-5, so no subject here is a training, validation or test subject of the demo set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medood.data.demo.brain import (
    BrainTemplate,
    _rng,
    _trilinear,
    _warp_coords,
    load_template,
)
from medood.data.demo.brain_set import save_nifti
from medood.data.demo.lesions import LesionLayer, _blob, _distance_mm, _pick_centre, _radii, make_lesions
from medood.data.demo.mri_physics import LESION_TISSUES, TISSUES, Protocol, Tissue, add_rician_noise, signal
from medood.data.demo.mri_physics import smooth_field as _field
from medood.utils.io import atomic_write_text

__all__ = ["LESION_RECIPES", "SITES", "SIZE_BUCKETS", "synthesize_shifted", "write_shifted_site"]

logger = logging.getLogger(__name__)

#: Site profiles: sequence, T1 factor (field strength), acquired voxel size (mm), noise (fraction of the
#: reference level), bias-field sd, skull-strip fault (``"shell"`` left-over tissue / ``"eroded"`` cortex).
SITES: dict[str, dict[str, Any]] = {
    "mprage_3t": {"protocol": Protocol("ir", tr=2000.0, te=4.0, ti=900.0), "t1_factor": 1.3,
                  "voxel": (2.0, 2.0, 2.0), "noise": 0.012, "bias": 0.28, "strip": "shell"},
    "se_thick": {"protocol": Protocol("se", tr=420.0, te=18.0), "t1_factor": 1.0,
                 "voxel": (2.0, 2.0, 5.0), "noise": 0.05, "bias": 0.18, "strip": "eroded"},
    "se_3t_lowres": {"protocol": Protocol("se", tr=700.0, te=9.0), "t1_factor": 1.25,
                     "voxel": (3.0, 3.0, 4.0), "noise": 0.03, "bias": 0.22, "strip": "shell"},
}  # fmt: skip
#: Lesion recipes of the lesioned subjects (cycled): blob radii (mm) and counts, or a demo lesion kind.
LESION_RECIPES: tuple[str, ...] = ("small", "medium", "large", "ms", "mixed", "tumour")
_BLOBS = {"small": ((4.0, 8.0), (2, 4)), "medium": ((10.0, 13.0), (1, 2)), "large": ((16.0, 24.0), (1, 1))}
_BLOB_TISSUES = ("hyper", "hypo", "ms", "oedema", "necrotic_core")
#: Lesion component size buckets (voxels of the written grid): ``[lo, hi)``.
SIZE_BUCKETS: dict[str, tuple[int, float]] = {"<500": (0, 500), "500-1500": (500, 1500), ">1500": (1500, np.inf)}
_FAT = Tissue(260.0, 80.0, 0.9)  # left-over scalp fat / dura: bright on T1w
_SLOPE_MAX = 15.0  # keep the written intensities inside the int16 range of save_nifti


def _site_params(rng: np.random.Generator, site: str) -> dict[str, Any]:
    """Subject draws outside the demo training range (see the module docstring)."""
    big = rng.random() < 0.5
    return {
        "site": site,
        "scale": float(rng.uniform(1.05, 1.08) if big else rng.uniform(0.86, 0.92)),
        "aniso": rng.uniform(0.97, 1.03, 3).tolist(),
        "deform_mm": float(rng.uniform(4.0, 6.0)),
        "ventricle_scale": float(rng.uniform(0.35, 0.6) if rng.random() < 0.5 else rng.uniform(-0.4, -0.25)),
        "atrophy": float(rng.uniform(0.0, 0.35)),
        "gamma": float(np.exp(rng.normal(0.0, 0.15))),
        "intensity_scale": float(np.exp(rng.uniform(np.log(0.3), np.log(4.0)))),
        "tissue_jitter": float(rng.uniform(0.03, 0.06)),
    }


def _anatomy(tpl: BrainTemplate, rng: np.random.Generator, p: dict[str, Any]) -> dict[str, np.ndarray]:
    """Deformed, rescaled tissue maps on the whole grid: gm, wm, csf (float), mask, ventricles (bool)."""
    coords = _warp_coords(tpl, rng, p)  # the demo deformation and ventricle warp, with this site's (larger) draws
    centre = np.array([(s.start + s.stop - 1) / 2 for s in tpl.crop], dtype=np.float32)
    factor = p["scale"] * np.asarray(p["aniso"], dtype=np.float32)
    coords = centre.reshape(3, 1, 1, 1) + (coords - centre.reshape(3, 1, 1, 1)) / factor.reshape(3, 1, 1, 1)
    nearest = tuple(np.clip(np.rint(c), 0, n - 1).astype(np.intp) for c, n in zip(coords, tpl.shape))
    inside = tpl.support[nearest]
    maps = np.zeros((*inside.shape, 4), dtype=np.float32)
    maps[inside] = _trilinear(tpl.stack, coords[:, inside])
    mask = maps[..., 0] >= 0.5
    gm, wm = maps[..., 1] * mask, maps[..., 2] * mask
    if p["atrophy"] > 0:  # patchy cortical thinning: grey matter becomes CSF
        gm = gm * (1.0 - p["atrophy"] * np.clip(_field(mask.shape, 5, rng, sd=1.0) + 0.5, 0.0, 1.0))
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    return {"gm": gm, "wm": wm, "csf": csf, "mask": mask, "ventricles": (maps[..., 3] >= 0.5) & mask}


def _sized_blobs(recipe: str, anat: dict[str, np.ndarray], rng: np.random.Generator) -> list[LesionLayer]:
    """Lobulated blobs of the recipe's radii in white / grey matter, one tissue per blob."""
    if recipe in ("ms", "tumour"):
        return make_lesions(recipe, anat, 2.0, rng)
    parts = ["small", "medium", "large"] if recipe == "mixed" else [recipe]
    edt, layers = _distance_mm(anat["mask"], 2.0), []
    for part in parts:
        (lo, hi), (cmin, cmax) = _BLOBS[part]
        for _ in range(1 if recipe == "mixed" else int(rng.integers(cmin, cmax + 1))):
            radius = float(rng.uniform(lo, hi))
            ok = ((anat["wm"] + anat["gm"]) > 0.6) & (edt > 0.8 * radius + 3.0)
            centre = _pick_centre(ok, edt >= edt.max() * 0.8, rng)
            (weight,) = _blob(anat["mask"].shape, centre, _radii(radius, 2.0, rng, (1.0, 1.3)), rng, 0.25, 0.75)
            tissue = LESION_TISSUES[_BLOB_TISSUES[int(rng.integers(len(_BLOB_TISSUES)))]].jittered(rng, 0.05)
            layers.append(LesionLayer(weight * anat["mask"], tissue, 1.0, part))
    return layers


def _strip_mask(mask: np.ndarray, fault: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The site's brain mask and its left-over shell (empty unless ``fault == "shell"``)."""
    patches = _field(mask.shape, 4, rng) > 0.0
    if fault == "eroded":
        eroded = ndi.binary_erosion(mask, iterations=2)
        return np.where(patches, eroded, mask), np.zeros_like(mask)
    shell = ndi.binary_dilation(mask, iterations=int(rng.integers(1, 3))) & ~mask & patches
    return mask | shell, shell


def _acquire(img: np.ndarray, voxel: tuple[float, ...], noise_sd: float, rng: np.random.Generator) -> np.ndarray:
    """Box-average to the acquired voxel size, add Rician noise there, resample back to 2 mm (trilinear)."""
    factor = np.asarray(voxel, dtype=np.float64) / 2.0
    if np.all(factor == 1.0):
        return add_rician_noise(img, noise_sd, rng)
    smooth = ndi.uniform_filter(img, size=tuple(max(1, round(f)) for f in factor), mode="constant")
    smooth = ndi.gaussian_filter(smooth, sigma=tuple(0.3 * f if f > 1 else 0.0 for f in factor), mode="constant")
    coarse = ndi.zoom(smooth, 1.0 / factor, order=1, grid_mode=True, mode="grid-constant")
    noisy = add_rician_noise(coarse, noise_sd, rng)
    back = ndi.zoom(noisy, np.array(img.shape) / np.array(coarse.shape), order=1, grid_mode=True, mode="nearest")
    out = np.zeros(img.shape, dtype=np.float32)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(img.shape, back.shape))
    out[sl] = back[sl]
    return out


def synthesize_shifted(
    template: BrainTemplate, seed: tuple[int, ...], site: str, recipe: str | None = None, lesion_seed: Any = None
) -> dict[str, Any]:
    """One shifted-site T1w subject on the template grid.

    Args:
        template: the demo template (``load_template("small")``: 2 mm).
        seed: subject seed (anatomy, scanner draws, noise); the same seed with and without lesions gives twins.
        site: key of :data:`SITES`.
        recipe: one of :data:`LESION_RECIPES`, or ``None`` for a healthy subject.
        lesion_seed: seed of the lesions. Defaults to ``seed``.

    Returns:
        ``{"image", "brainmask", "lesion", "params"}`` (float32 image, uint8 masks).
    """
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {sorted(SITES)}")
    if recipe is not None and recipe not in LESION_RECIPES:
        raise ValueError(f"unknown lesion recipe {recipe!r}; expected one of {LESION_RECIPES}")
    cfg = SITES[site]
    tpl = dataclasses.replace(template, crop=tuple(slice(0, n) for n in template.shape))  # room for larger heads
    p = _site_params(_rng(seed, 0), site)
    anat = _anatomy(tpl, _rng(seed, 1), p)
    layers = [] if recipe is None else _sized_blobs(recipe, anat, _rng(seed if lesion_seed is None else lesion_seed, 2))
    trng = _rng(seed, 3)
    tissues = {n: t.jittered(trng, p["tissue_jitter"]) for n, t in TISSUES.items()}
    tissues = {n: dataclasses.replace(t, t1=t.t1 * cfg["t1_factor"]) for n, t in tissues.items()}
    mask = anat["mask"]
    img = np.zeros(mask.shape, dtype=np.float32)
    for name, tissue in tissues.items():
        img += anat[name] * np.float32(signal(tissue, cfg["protocol"]))
    ref = max(float(np.percentile(img[mask], 95)), 1e-6)
    for layer in layers:  # blended into the tissue signal as in the demo subjects
        lesion_tissue = dataclasses.replace(layer.tissue, t1=layer.tissue.t1 * cfg["t1_factor"])
        img += layer.weight * (np.float32(signal(lesion_tissue, cfg["protocol"])) * layer.texture - img)
    srng = _rng(seed, 4)
    brain, shell = _strip_mask(mask, cfg["strip"], srng)
    img[shell] = np.float32(signal(_FAT, cfg["protocol"]))
    img = np.float32(ref) * (np.clip(img, 0.0, None) / np.float32(ref)) ** np.float32(p["gamma"])
    img *= np.exp(_field(mask.shape, 3, srng, sd=cfg["bias"])).astype(np.float32)
    img = _acquire(img * (mask | shell), cfg["voxel"], cfg["noise"] * ref, srng) * brain
    img = np.clip(img * np.float32(p["intensity_scale"]), 0.0, _SLOPE_MAX)
    lesion = np.zeros(mask.shape, dtype=bool)
    for layer in layers:
        lesion |= layer.weight >= 0.5
    return {
        "image": img.astype(np.float32),
        "brainmask": brain.astype(np.uint8),
        "lesion": (lesion & brain).astype(np.uint8),
        "params": {**p, "recipe": recipe or "none"},
    }


def lesion_components(lesion: np.ndarray) -> list[int]:
    """Voxel counts of the 26-connected lesion components."""
    labels, n = ndi.label(lesion > 0, structure=np.ones((3, 3, 3), dtype=bool))
    return [int(c) for c in np.bincount(labels.ravel())[1:]] if n else []


def write_shifted_site(out: str | Path, seed: int = 0, n_subjects: int = 12) -> dict[str, Any]:
    """Write ``n_subjects`` healthy shifted-site subjects and their lesioned twins with a ``dataset.json``.

    The layout is the demo set's: ``validation`` (healthy) and ``validation_lesion`` (``label`` = lesion mask,
    ``lesion_voxels``, ``lesion_components``, ``site``, ``recipe``) lists of T1w volumes (``image``) and brain masks.

    Args:
        out: output folder (created).
        seed: base seed; the output is deterministic per seed.
        n_subjects: healthy subjects (each with a lesioned twin); sites and lesion recipes are cycled.

    Returns:
        The datalist written to ``dataset.json``.
    """
    out = Path(out)
    tpl = load_template("small")
    sites_json = {k: {**v, "protocol": dataclasses.asdict(v["protocol"])} for k, v in SITES.items()}
    buckets_json = {k: [lo, None if hi == np.inf else hi] for k, (lo, hi) in SIZE_BUCKETS.items()}
    data: dict[str, Any] = {"name": "medood-shifted-site-validation", "seed": seed, "spacing_mm": [tpl.spacing] * 3,
                            "sites": sites_json, "size_buckets": buckets_json,
                            "validation": [], "validation_lesion": []}  # fmt: skip
    sites = sorted(SITES)
    for i in range(n_subjects):
        site, recipe = sites[i % len(sites)], LESION_RECIPES[i % len(LESION_RECIPES)]
        for kind, key in ((None, "validation"), (recipe, "validation_lesion")):
            sub = synthesize_shifted(tpl, (seed, 20, i), site, kind, lesion_seed=(seed, 21, i))
            folder, name = ("healthy", f"site-{i:03d}") if kind is None else ("lesion", f"site-{i:03d}_{recipe}")
            entry: dict[str, Any] = {"case": name, "site": site, "image": f"{folder}/{name}_T1w.nii.gz",
                                     "brainmask": f"{folder}/{name}_brainmask.nii.gz"}  # fmt: skip
            save_nifti(out / entry["image"], sub["image"], tpl.affine, kind="image")
            save_nifti(out / entry["brainmask"], sub["brainmask"], tpl.affine, kind="mask")
            if kind is not None:
                entry["label"] = f"{folder}/{name}_lesion.nii.gz"
                save_nifti(out / entry["label"], sub["lesion"], tpl.affine, kind="mask")
                comps = lesion_components(sub["lesion"])
                entry.update(recipe=recipe, is_anomalous=1, lesion_voxels=int(sum(comps)), lesion_components=comps)
            else:
                entry["is_anomalous"] = 0
            entry["params"] = {k: v for k, v in sub["params"].items() if k != "site"}
            data[key].append(entry)
            logger.info("shifted site: %s (%s) written", name, site)
    atomic_write_text(out / "dataset.json", json.dumps(data, indent=2) + "\n")
    return data
