"""The ``pathology`` demo set: patches of the real scikit-image IHC slide, labelled by stain content.

Source: ``skimage.data.immunohistochemistry()`` (``ihc.png`` in the scikit-image wheel, 512x512 RGB, colon tissue
with haematoxylin counterstain and DAB immunostaining; "no known copyright restrictions"). Colour deconvolution
(:func:`skimage.color.rgb2hed`) gives per-pixel DAB and haematoxylin positivity; a square crop (40-88 px, then
resized, rotated by a multiple of 90 degrees and possibly flipped) is labelled by its positive fractions:

* ``dab_rich``: more than 50 % DAB-positive pixels (immunopositive epithelium);
* ``haematoxylin_rich``: under 12 % DAB and over 8 % haematoxylin-positive pixels (nuclei-rich stroma);
* ``background_stroma``: under 12 % DAB and at most 8 % haematoxylin (pale stroma, lumen);

crops in between are not used. To limit leakage the slide is cut into 16 blocks of 128x128 px and every crop lies
inside one block: blocks 3 and 8 feed ``val``, 12 and 13 feed ``test``, the rest ``train``. All splits still come
from one slide, so the task is easy and the splits are correlated: it is a demo, not a benchmark.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from medood.data.demo.images2d import Generator, SetSpec
from medood.data.demo.ood import far_ood_generator
from medood.data.demo.procedural import random_crop, to_rgb
from medood.transforms.stain import DAB_THRESHOLD, HAEMATOXYLIN_THRESHOLD

__all__ = ["CLASSES", "SPEC", "stain_fractions"]

CLASSES: tuple[str, ...] = ("dab_rich", "haematoxylin_rich", "background_stroma")
_BLOCK = 128
_SPLIT_BLOCKS: dict[str, tuple[int, ...]] = {
    "train": (0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 14, 15),
    "val": (3, 8),
    "test": (12, 13),
}
_CROP_SIZES = (40, 56, 72, 88)
_DAB_T, _HEM_T = DAB_THRESHOLD, HAEMATOXYLIN_THRESHOLD  # optical density of a positive pixel (rgb2hed units)


@functools.lru_cache(maxsize=1)
def _slide() -> tuple[np.ndarray, np.ndarray]:
    """The IHC slide as float RGB in [0, 1] and its HED optical densities."""
    from skimage import color
    from skimage import data as skdata

    rgb = skdata.immunohistochemistry()
    return rgb.astype(np.float32) / 255.0, color.rgb2hed(rgb).astype(np.float32)


def stain_fractions(hed: np.ndarray) -> tuple[float, float]:
    """Fractions of DAB-positive and haematoxylin-positive pixels of an HED crop."""
    return float((hed[..., 2] > _DAB_T).mean()), float((hed[..., 0] > _HEM_T).mean())


def _label(dab: np.ndarray, hem: np.ndarray) -> np.ndarray:
    """Class index per crop (-1 = ambiguous, unused)."""
    out = np.full(dab.shape, -1, dtype=np.int64)
    out[dab > 0.5] = 0
    out[(dab < 0.12) & (hem > 0.08)] = 1
    out[(dab < 0.12) & (hem <= 0.08)] = 2
    return out


@functools.lru_cache(maxsize=4)
def _candidates(split: str) -> dict[int, np.ndarray]:
    """All crops ``(y, x, side)`` of a split on an 8-px grid, grouped by class (via summed-area tables)."""
    _, hed = _slide()
    tables = [np.pad((hed[..., c] > t).cumsum(0).cumsum(1), ((1, 0), (1, 0))) for c, t in ((2, _DAB_T), (0, _HEM_T))]
    rows = []
    for block in _SPLIT_BLOCKS[split]:
        by, bx = (b * _BLOCK for b in divmod(block, 512 // _BLOCK))
        for side in _CROP_SIZES:
            starts = np.arange(0, _BLOCK - side + 1, 8)
            ys, xs = (a.ravel() for a in np.meshgrid(by + starts, bx + starts, indexing="ij"))
            rows.append(np.stack([ys, xs, np.full_like(ys, side)], axis=1))
    crops = np.concatenate(rows)
    y, x, s = crops.T
    fracs = [(t[y + s, x + s] - t[y, x + s] - t[y + s, x] + t[y, x]) / (s * s) for t in tables]
    labels = _label(fracs[0], fracs[1])
    return {c: crops[labels == c] for c in range(len(CLASSES))}


def _augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rotation by a multiple of 90 degrees and a random flip."""
    crop = np.rot90(crop, int(rng.integers(4)))
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def _crop(split: str, cls: int, rng: np.random.Generator) -> np.ndarray:
    rgb, _ = _slide()
    pool = _candidates(split)[cls]
    if pool.size == 0:  # cannot happen with the fixed blocks above; kept as a guard
        pool = np.concatenate([_candidates(s)[cls] for s in _SPLIT_BLOCKS])
    y, x, side = pool[int(rng.integers(len(pool)))]
    return _augment(rgb[y : y + side, x : x + side], rng)


def _class_generator(cls: int) -> Generator:
    def gen(rng: np.random.Generator, split: str) -> np.ndarray:
        return _crop(split, cls, rng)

    return gen


def _any_crop(rng: np.random.Generator) -> np.ndarray:
    """A crop of any class from the val/test blocks (used to derive near-OOD images)."""
    split = "val" if rng.random() < 0.5 else "test"
    return _crop(split, int(rng.integers(len(CLASSES))), rng)


def _stain_shift(rng: np.random.Generator, split: str) -> np.ndarray:
    """Real patch re-stained: haematoxylin and DAB densities scaled far outside the slide's range."""
    from skimage import color

    hed = color.rgb2hed(np.clip(_any_crop(rng), 0, 1))
    for channel in (0, 2):
        factor = rng.uniform(0.2, 0.5) if rng.random() < 0.5 else rng.uniform(1.8, 3.0)
        hed[..., channel] *= factor
    hed[..., 1] += rng.uniform(0.005, 0.03)  # eosin-like tint the slide does not have
    return np.clip(color.hed2rgb(hed), 0, 1).astype(np.float32)


def _defocus(rng: np.random.Generator, split: str) -> np.ndarray:
    """Real patch, out of focus (Gaussian blur of 2.5-4 px before resizing)."""
    crop = _any_crop(rng)
    return ndi.gaussian_filter(crop, sigma=(rng.uniform(2.5, 4.0),) * 2 + (0,))


def _cell(rng: np.random.Generator, split: str) -> np.ndarray:
    """Crop of the real quantitative-phase microscopy image ``skimage.data.cell()`` (grey)."""
    from skimage import data as skdata

    return random_crop(to_rgb(skdata.cell().astype(np.float32) / 255.0), rng, frac=(0.1, 0.3))


SPEC = SetSpec(
    name="pathology",
    classes={name: _class_generator(i) for i, name in enumerate(CLASSES)},
    ood_near={"stain_shift": _stain_shift, "defocus_blur": _defocus, "cell_microscopy": _cell},
    ood_far={kind: far_ood_generator(kind) for kind in ("xray", "ct_mr", "ultrasound", "fundus")},
    readme="""## Sources
* **Classes (real):** patches of `skimage.data.immunohistochemistry()` (the IHC colon slide shipped in the
  scikit-image wheel, "no known copyright restrictions"), labelled by colour deconvolution (`rgb2hed`):
  `dab_rich` (> 50 % DAB-positive pixels), `haematoxylin_rich` (< 12 % DAB, > 8 % haematoxylin),
  `background_stroma` (< 12 % DAB, <= 8 % haematoxylin). Crops of 40-88 px, rotated/flipped, resized.
  The slide is cut into 16 blocks of 128 px; blocks 3 and 8 feed `val`, 12 and 13 `test`, the rest `train`
  (no crop crosses a block). All splits come from one slide: an easy, correlated demo task, not a benchmark.
* **ood_near (real pixels, altered):** `stain_shift` (haematoxylin/DAB densities scaled x0.2-0.5 or x1.8-3
  plus an eosin tint), `defocus_blur` (Gaussian blur 2.5-4 px), `cell_microscopy` (crops of the real
  `skimage.data.cell()` phase-contrast image).
* **ood_far (real):** crops of pydicom-data DICOM test images (`xray`: RG1_UNCI chest and RG3_UNCI extremity CR;
  `ct_mr`: 693_UNCI head CT, MR2_UNCI shoulder MR, MR-SIEMENS abdomen MR; `ultrasound`: US1_UNCI) and of the
  scikit-image fundus photograph `skimage.data.retina()` (`fundus`, CC0). pydicom-data is MIT-licensed.
""",
)
