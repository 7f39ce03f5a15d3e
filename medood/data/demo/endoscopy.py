"""The ``endoscopy`` demo set: procedural GI-endoscopy look-alikes (no real endoscopy image ships offline).

Every image is drawn at 128x128 px and resized: pink-red mucosa with fine texture, branching vessels, circular
folds around a dark lumen, light fall-off from the scope tip, specular highlights and the black corners of the
endoscope's field of view. Classes in the spirit of Kvasir (look-alikes, no clinical validity):

* ``normal_mucosa``: mucosa only;
* ``polyp``: a raised, rounded, shaded structure with highlights on its dome and a shadow on one side;
* ``ulcer_inflammation``: whitish-yellow fibrin patches with red halos and/or patchy erythema.

Near-OOD kinds: ``instrument`` (metallic tool entering from the border), ``dyed_lifted_polyp`` (indigo-carmine
blue dye around a polyp), ``debris`` (brown-green stool residue). Far-OOD kinds are real crops of the
scikit-image fundus photograph, pydicom-data X-rays and the scikit-image IHC histology slide.
"""

from __future__ import annotations

import numpy as np

from medood.data.demo.images2d import SetSpec
from medood.data.demo.ood import far_ood_generator
from medood.data.demo.procedural import blend, draw_curves, noise2d, polar_blob, random_crop, soft_disc, unit_grid

__all__ = ["CLASSES", "SPEC"]

CLASSES: tuple[str, ...] = ("normal_mucosa", "polyp", "ulcer_inflammation")
_SIZE = 128


def _colour(base: tuple[float, float, float], rng: np.random.Generator, sd: float = 0.04) -> np.ndarray:
    col = np.asarray(base, np.float32) * np.float32(1.0 + rng.normal(0.0, sd * 2))
    return np.clip(col + rng.normal(0.0, sd / 2, 3).astype(np.float32), 0.0, 1.0)


def _mucosa(rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float]]:
    """Mucosa with lumen, folds, vessels, texture and light fall-off; returns the image and the lumen centre."""
    y, x = unit_grid(_SIZE)
    img = np.ones((_SIZE, _SIZE, 3), np.float32) * _colour((0.95, 0.56, 0.5), rng)[None, None, :]
    img *= (1.0 + 0.05 * noise2d(_SIZE, 4, rng) + 0.03 * noise2d(_SIZE, 30, rng))[..., None]
    lumen = (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.6, 0.6)))
    dist = np.sqrt((y - lumen[0]) ** 2 + (x - lumen[1]) ** 2) + 0.08 * noise2d(_SIZE, 5, rng)
    folds = 0.5 + 0.5 * np.sin(dist * rng.uniform(10, 16) + rng.uniform(0, 2 * np.pi))
    img *= (1.0 - 0.18 * folds * np.clip(1.2 - dist, 0, 1))[..., None]
    vessels = draw_curves(_SIZE, rng, int(rng.integers(3, 9)), width=(1, 1), wiggle=0.25)
    img = blend(img, _colour((0.62, 0.18, 0.2), rng), vessels * rng.uniform(0.3, 0.6))
    img *= np.clip(1.2 - 0.45 * dist, 0.35, 1.1)[..., None]  # light fall-off from the scope tip
    img = blend(img, (0.12, 0.03, 0.03), soft_disc(_SIZE, lumen, rng.uniform(0.1, 0.28), 0.25) * 0.9)
    return img, lumen


def _highlights(img: np.ndarray, rng: np.random.Generator, count: int, where: np.ndarray | None = None) -> np.ndarray:
    for _ in range(count):
        centre = (float(rng.uniform(-0.9, 0.9)), float(rng.uniform(-0.9, 0.9)))
        if where is not None:
            idx = np.flatnonzero(where > 0.5)
            if idx.size:
                py, px = np.unravel_index(idx[int(rng.integers(idx.size))], where.shape)
                centre = ((py + 0.5) / _SIZE * 2 - 1, (px + 0.5) / _SIZE * 2 - 1)
        img = blend(img, (1.0, 0.98, 0.96), soft_disc(_SIZE, centre, rng.uniform(0.01, 0.04), 0.015))
    return img


def _scope_mask(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Black outside the (octagon-like) field of view."""
    y, x = unit_grid(_SIZE)
    radius = rng.uniform(1.05, 1.3)
    octagon = np.maximum(np.maximum(np.abs(x), np.abs(y)), (np.abs(x) + np.abs(y)) / 1.35)
    return blend(img, (0.0, 0.0, 0.0), np.clip((octagon - radius + 0.3) / 0.04, 0.0, 1.0))


def _finish(img: np.ndarray, rng: np.random.Generator, n_highlights: int) -> np.ndarray:
    return _scope_mask(_highlights(img, rng, n_highlights), rng)


def _normal(rng: np.random.Generator, split: str) -> np.ndarray:
    img, _ = _mucosa(rng)
    return _finish(img, rng, int(rng.integers(2, 8)))


def _add_polyp(img: np.ndarray, rng: np.random.Generator, lumen: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Blend a shaded dome; returns the image and the polyp weight."""
    centre = (float(rng.uniform(-0.45, 0.45)), float(rng.uniform(-0.45, 0.45)))
    radius = float(rng.uniform(0.18, 0.4))
    shape = polar_blob(_SIZE, centre, radius, rng.uniform(0.03, 0.15), rng, edge=0.04, aspect=rng.uniform(0.8, 1.25))
    y, x = unit_grid(_SIZE)
    r = np.sqrt((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / radius
    dome = np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0))
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)], np.float32)
    shading = 0.75 + 0.35 * dome + 0.25 * ((y - centre[0]) * light[0] + (x - centre[1]) * light[1]) / radius
    colour = _colour((0.9, 0.52, 0.45) if rng.random() < 0.5 else (0.8, 0.36, 0.33), rng)
    surface = colour[None, None, :] * shading[..., None] * (1.0 + 0.06 * noise2d(_SIZE, 16, rng))[..., None]
    shadow = np.clip(
        polar_blob(_SIZE, (centre[0] + 0.05, centre[1] + 0.05), radius * 1.1, 0.05, rng, 0.08) - shape, 0, 1
    )
    img = blend(img, (0.35, 0.1, 0.1), shadow * 0.5)
    return blend(img, surface, shape), shape


def _polyp(rng: np.random.Generator, split: str) -> np.ndarray:
    img, lumen = _mucosa(rng)
    img, shape = _add_polyp(img, rng, lumen)
    img = _highlights(img, rng, int(rng.integers(2, 6)), where=shape)
    return _finish(img, rng, int(rng.integers(1, 4)))


def _ulcer(rng: np.random.Generator, split: str) -> np.ndarray:
    img, _ = _mucosa(rng)
    if rng.random() < 0.6:  # patchy erythema
        patches = np.clip(noise2d(_SIZE, 6, rng) - 0.6, 0.0, 1.0)
        img = blend(img, _colour((0.78, 0.12, 0.14), rng), patches * 0.8)
    for _ in range(int(rng.integers(1, 4))):
        centre = (float(rng.uniform(-0.55, 0.55)), float(rng.uniform(-0.55, 0.55)))
        radius = float(rng.uniform(0.08, 0.25))
        halo = polar_blob(_SIZE, centre, radius * 1.45, 0.15, rng, edge=0.08)
        img = blend(img, _colour((0.76, 0.16, 0.16), rng), halo * 0.75)
        fibrin = polar_blob(_SIZE, centre, radius, rng.uniform(0.1, 0.25), rng, edge=0.03)
        texture = (1.0 + 0.08 * noise2d(_SIZE, 20, rng))[..., None]
        img = blend(img, _colour((0.93, 0.89, 0.74), rng)[None, None, :] * texture, fibrin)
    return _finish(img, rng, int(rng.integers(1, 6)))


def _instrument(rng: np.random.Generator, split: str) -> np.ndarray:
    """Metallic tool (grey rod with a bright edge) entering from the border; near-OOD artefact."""
    img, _ = _mucosa(rng)
    y, x = unit_grid(_SIZE)
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)], np.float32)
    start = -1.3 * direction
    along = (y - start[0]) * direction[0] + (x - start[1]) * direction[1]
    across = -(y - start[0]) * direction[1] + (x - start[1]) * direction[0]
    width = rng.uniform(0.1, 0.22)
    rod = np.clip((width - np.abs(across)) / 0.02, 0, 1) * np.clip((rng.uniform(0.9, 1.7) - along) / 0.02, 0, 1)
    metal = 0.45 + 0.4 * np.cos(across / width * np.pi / 2) ** 4 + 0.05 * noise2d(_SIZE, 10, rng)
    img = blend(img, np.repeat(metal[..., None], 3, -1) * np.array([0.95, 0.97, 1.0], np.float32), rod)
    return _finish(img, rng, int(rng.integers(1, 5)))


def _dyed(rng: np.random.Generator, split: str) -> np.ndarray:
    """Indigo-carmine dyed, lifted polyp: blue-stained submucosal cushion."""
    img, lumen = _mucosa(rng)
    img, shape = _add_polyp(img, rng, lumen)
    dye = np.clip(polar_blob(_SIZE, (0.0, 0.0), rng.uniform(0.5, 0.8), 0.2, rng, edge=0.2) - 0.3 * shape, 0, 1)
    blue = _colour((0.25, 0.35, 0.75), rng)
    img = blend(img, blue * np.clip(img.mean(-1, keepdims=True) * 1.6, 0.3, 1.2), dye * rng.uniform(0.6, 0.9))
    return _finish(_highlights(img, rng, 3, where=shape), rng, 2)


def _debris(rng: np.random.Generator, split: str) -> np.ndarray:
    """Brown-green stool residue patches."""
    img, _ = _mucosa(rng)
    residue = np.clip(noise2d(_SIZE, 7, rng) - rng.uniform(0.2, 0.8), 0.0, 0.5) * 2.0
    colour = _colour((0.55, 0.45, 0.18) if rng.random() < 0.5 else (0.42, 0.4, 0.15), rng)
    img = blend(img, colour[None, None, :] * (1.0 + 0.1 * noise2d(_SIZE, 24, rng))[..., None], residue)
    return _finish(img, rng, int(rng.integers(1, 4)))


def _histology(rng: np.random.Generator, split: str) -> np.ndarray:
    """Crop of the real scikit-image IHC slide (far-OOD for endoscopy)."""
    from skimage import data as skdata

    return random_crop(skdata.immunohistochemistry().astype(np.float32) / 255.0, rng, frac=(0.1, 0.3))


SPEC = SetSpec(
    name="endoscopy",
    classes={"normal_mucosa": _normal, "polyp": _polyp, "ulcer_inflammation": _ulcer},
    ood_near={"instrument": _instrument, "dyed_lifted_polyp": _dyed, "debris": _debris},
    ood_far={"fundus": far_ood_generator("fundus"), "xray": far_ood_generator("xray"), "histology": _histology},
    readme="""## Sources
* **Classes (procedural, not real):** no endoscopy image ships offline, so every in-distribution image is drawn
  by `medood.data.demo.endoscopy`: pink-red mucosa, folds around a dark lumen, vessels, light fall-off, specular
  highlights and the black scope corners; `normal_mucosa`, `polyp` (raised shaded dome with highlights),
  `ulcer_inflammation` (whitish fibrin patches with red halos, patchy erythema). Look-alikes in the spirit of
  Kvasir for software tests and demos, with no clinical validity.
* **ood_near (procedural):** `instrument` (metal tool), `dyed_lifted_polyp` (indigo-carmine blue),
  `debris` (stool residue).
* **ood_far (real):** crops of `skimage.data.retina()` (`fundus`, CC0), pydicom-data RG1_UNCI/RG3_UNCI CR
  (`xray`, MIT) and `skimage.data.immunohistochemistry()` (`histology`, no known copyright restrictions).
""",
)
