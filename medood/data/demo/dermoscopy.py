"""The ``dermoscopy`` demo set: procedural dermoscopy look-alikes (no real dermoscopy image ships offline).

Every image is drawn at 128x128 px and resized: a skin-tone background with low-frequency illumination, fine
texture, an optional dermoscope vignette and hairs, plus one pigmented lesion. The class is defined by the
lesion's shape, border and colours (a loose ABCD-rule analogy; these are not medical images):

* ``nevus_like``: round or oval, regular sharp border, one brown shade, faint pigment network;
* ``melanoma_like``: larger, asymmetric, very irregular border, several colours (dark brown/black, blue-grey veil,
  red, white regression areas);
* ``seborrheic_like``: light tan/brown, sharply demarcated "stuck-on" border, ridged (cerebriform) texture with
  white milia-like dots and dark comedo-like openings.

Near-OOD kinds are unusual lesions or artefacts (``vascular_like`` red-purple lacunae, ``blue_nevus_like``,
``ruler_ink``: a nevus-like lesion with ruler ticks and violet skin-marker ink). Far-OOD kinds are real crops of
the scikit-image fundus photograph and pydicom-data X-ray and CT/MR slices.
"""

from __future__ import annotations

import numpy as np

from medood.data.demo.images2d import SetSpec
from medood.data.demo.ood import far_ood_generator
from medood.data.demo.procedural import blend, draw_curves, noise2d, polar_blob, soft_disc, unit_grid

__all__ = ["CLASSES", "SPEC"]

CLASSES: tuple[str, ...] = ("nevus_like", "melanoma_like", "seborrheic_like")
_SIZE = 128
_LIGHT_SKIN = np.array([0.93, 0.78, 0.70], dtype=np.float32)
_DARK_SKIN = np.array([0.62, 0.43, 0.33], dtype=np.float32)


def _jitter(colour: tuple[float, float, float], rng: np.random.Generator, sd: float = 0.04) -> np.ndarray:
    """Colour with brightness jitter (sd ``sd * 3``, relative) and a small hue jitter (sd ``sd / 3``)."""
    col = np.asarray(colour, np.float32) * np.float32(1.0 + rng.normal(0.0, 3 * sd))
    return np.clip(col + rng.normal(0.0, sd / 3, 3).astype(np.float32), 0.0, 1.0)


def _mottle(img: np.ndarray, weight: np.ndarray, rng: np.random.Generator, amount: float = 0.08) -> np.ndarray:
    """Fine multiplicative mottling inside ``weight`` (lesions are never perfectly flat)."""
    return img * (1.0 + amount * weight * noise2d(_SIZE, 22, rng))[..., None]


def _skin(rng: np.random.Generator) -> np.ndarray:
    """Skin background: tone, illumination, texture, optional dermoscope vignette."""
    tone = _LIGHT_SKIN + (_DARK_SKIN - _LIGHT_SKIN) * rng.uniform(0.0, 0.7)
    tone = np.clip(tone + rng.normal(0.0, 0.02, 3), 0.0, 1.0).astype(np.float32)
    light = 1.0 + 0.06 * noise2d(_SIZE, 3, rng) + 0.025 * noise2d(_SIZE, 24, rng)
    img = tone[None, None, :] * light[..., None]
    lines = np.abs(noise2d(_SIZE, 16, rng)) < 0.06  # fine skin furrows
    img = blend(img, tone * 0.88, lines.astype(np.float32) * 0.2)
    if rng.random() < 0.5:
        y, x = unit_grid(_SIZE)
        radius = rng.uniform(1.0, 1.35)
        vignette = np.clip((np.sqrt(y * y + x * x) - radius + 0.12) / 0.12, 0.0, 1.0)
        img = blend(img, (0.05, 0.04, 0.04), vignette)
    return img


def _hairs(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.45:
        return img
    mask = draw_curves(_SIZE, rng, int(rng.integers(1, 7)), width=(1, 2), wiggle=0.12)
    return blend(img, _jitter((0.18, 0.12, 0.08), rng, 0.03), mask * rng.uniform(0.7, 0.95))


def _centre(rng: np.random.Generator, spread: float = 0.15) -> tuple[float, float]:
    return float(rng.uniform(-spread, spread)), float(rng.uniform(-spread, spread))


def _network(rng: np.random.Generator) -> np.ndarray:
    """Reticular pigment network: thin darker lines around lighter holes."""
    return (np.abs(noise2d(_SIZE, 18, rng)) < 0.35).astype(np.float32)


def _nevus(rng: np.random.Generator, split: str) -> np.ndarray:
    img = _skin(rng)
    centre = _centre(rng)
    radius = rng.uniform(0.3, 0.55)
    lesion = polar_blob(_SIZE, centre, radius, rng.uniform(0.02, 0.07), rng, edge=rng.uniform(0.03, 0.06))
    lesion *= rng.uniform(0.8, 0.95)
    lesion = lesion * (1.0 + rng.uniform(0.0, 0.2) * soft_disc(_SIZE, centre, radius * 0.5, 0.2))
    brown = _jitter((0.50, 0.32, 0.20), rng)
    img = blend(img, brown, np.clip(lesion, 0, 1))
    img = blend(img, brown * 0.75, lesion * _network(rng) * 0.35)
    return _hairs(_mottle(img, lesion, rng), rng)


def _melanoma(rng: np.random.Generator, split: str) -> np.ndarray:
    img = _skin(rng)
    centre = _centre(rng, 0.2)
    radius = rng.uniform(0.4, 0.65)
    lesion = polar_blob(
        _SIZE, centre, radius, rng.uniform(0.16, 0.3), rng, edge=rng.uniform(0.02, 0.08), aspect=rng.uniform(0.7, 1.3)
    )
    lesion = lesion * rng.uniform(0.85, 1.0)
    img = blend(img, _jitter((0.42, 0.26, 0.17), rng), lesion)
    patches = [
        ((0.12, 0.08, 0.07), 0.6, 0.9),  # black / dark brown
        ((0.45, 0.50, 0.62), 1.1, 0.6),  # blue-grey veil
        ((0.70, 0.33, 0.32), 1.1, 0.6),  # red areas
        ((0.90, 0.86, 0.84), 1.4, 0.6),  # white regression
    ]
    for colour, threshold, strength in patches:
        if rng.random() < 0.75:
            region = np.clip(noise2d(_SIZE, 5, rng) - threshold + 0.6, 0.0, 1.0)
            img = blend(img, _jitter(colour, rng), lesion * region * strength)
    img = blend(img, (0.2, 0.12, 0.08), lesion * _network(rng) * rng.uniform(0.2, 0.45))
    return _hairs(_mottle(img, lesion, rng, 0.12), rng)


def _seborrheic(rng: np.random.Generator, split: str) -> np.ndarray:
    img = _skin(rng)
    centre = _centre(rng)
    radius = rng.uniform(0.3, 0.55)
    lesion = polar_blob(_SIZE, centre, radius, rng.uniform(0.05, 0.12), rng, edge=0.015, aspect=rng.uniform(0.75, 1.3))
    base = _jitter((0.66, 0.52, 0.38), rng, 0.05)
    img = blend(img, base, lesion * rng.uniform(0.85, 1.0))
    y, x = unit_grid(_SIZE)
    angle = rng.uniform(0, np.pi)
    ridges = np.sin(rng.uniform(25, 40) * (x * np.cos(angle) + y * np.sin(angle)) + 3.0 * noise2d(_SIZE, 6, rng))
    img = blend(img, base * 0.7, lesion * np.clip(ridges, 0, 1) * 0.45)
    for colour, count, r in (
        ((0.95, 0.93, 0.88), rng.integers(2, 8), 0.025),
        ((0.2, 0.14, 0.1), rng.integers(2, 8), 0.02),
    ):
        for _ in range(int(count)):
            spot_centre = (centre[0] + rng.uniform(-0.7, 0.7) * radius, centre[1] + rng.uniform(-0.7, 0.7) * radius)
            img = blend(img, colour, lesion * soft_disc(_SIZE, spot_centre, r * rng.uniform(0.7, 1.4), 0.015))
    return _hairs(_mottle(img, lesion, rng), rng)


def _vascular(rng: np.random.Generator, split: str) -> np.ndarray:
    """Angioma-like: clustered red to purple lacunae."""
    img = _skin(rng)
    centre = _centre(rng)
    area = polar_blob(_SIZE, centre, rng.uniform(0.2, 0.4), 0.08, rng, edge=0.05)
    img = blend(img, _jitter((0.78, 0.42, 0.42), rng), area * 0.6)
    for _ in range(int(rng.integers(6, 16))):
        c = (centre[0] + rng.normal(0, 0.15), centre[1] + rng.normal(0, 0.15))
        colour = _jitter((0.62, 0.1, 0.18) if rng.random() < 0.6 else (0.42, 0.12, 0.32), rng)
        img = blend(img, colour, area * soft_disc(_SIZE, c, rng.uniform(0.04, 0.1), 0.03))
    return _hairs(img, rng)


def _blue_nevus(rng: np.random.Generator, split: str) -> np.ndarray:
    img = _skin(rng)
    lesion = polar_blob(_SIZE, _centre(rng), rng.uniform(0.18, 0.35), rng.uniform(0.02, 0.06), rng, edge=0.06)
    return _hairs(blend(img, _jitter((0.30, 0.36, 0.52), rng), lesion * rng.uniform(0.85, 1.0)), rng)


def _ruler_ink(rng: np.random.Generator, split: str) -> np.ndarray:
    """A nevus-like lesion with ruler ticks along one edge and violet skin-marker ink."""
    img = _nevus(rng, split)
    y, x = unit_grid(_SIZE)
    edge = rng.uniform(0.7, 0.85)
    band = (np.abs(y - edge) < 0.1).astype(np.float32)
    img = blend(img, (0.95, 0.95, 0.92), band * 0.85)
    ticks = band * (np.abs(np.sin(x * np.pi * rng.uniform(8, 14))) > 0.9) * (y < edge + 0.02)
    img = blend(img, (0.05, 0.05, 0.05), ticks.astype(np.float32))
    ink = draw_curves(_SIZE, rng, int(rng.integers(1, 3)), width=(3, 5), wiggle=0.3)
    return blend(img, _jitter((0.45, 0.2, 0.6), rng), ink * rng.uniform(0.6, 0.9))


SPEC = SetSpec(
    name="dermoscopy",
    classes={"nevus_like": _nevus, "melanoma_like": _melanoma, "seborrheic_like": _seborrheic},
    ood_near={"vascular_like": _vascular, "blue_nevus_like": _blue_nevus, "ruler_ink": _ruler_ink},
    ood_far={kind: far_ood_generator(kind) for kind in ("fundus", "xray", "ct_mr")},
    readme="""## Sources
* **Classes (procedural, not real):** no dermoscopy image ships offline, so every in-distribution image is drawn
  by `medood.data.demo.dermoscopy`: skin tone, illumination, furrows, optional dermoscope vignette and hairs,
  and one lesion whose shape and colours define the class: `nevus_like` (round, regular, one brown shade, faint
  network), `melanoma_like` (asymmetric, irregular border, black/blue-grey/red/white areas),
  `seborrheic_like` (tan, sharp stuck-on border, ridged texture, milia-like white dots, comedo-like dark dots).
  These are look-alikes for software tests and demos, with no clinical validity.
* **ood_near (procedural):** `vascular_like` (red-purple lacunae), `blue_nevus_like` (uniform steel blue),
  `ruler_ink` (nevus-like lesion with ruler ticks and violet marker ink).
* **ood_far (real):** crops of `skimage.data.retina()` (`fundus`, CC0) and of pydicom-data DICOM test images
  (`xray`: RG1_UNCI/RG3_UNCI CR; `ct_mr`: 693_UNCI CT, MR2_UNCI and MR-SIEMENS MR; MIT).
""",
)
