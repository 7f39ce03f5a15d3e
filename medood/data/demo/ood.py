"""Out-of-distribution material for the demo sets: real DICOM slices from pydicom-data and OOD brain volumes.

Brain OOD volumes (all valid NIfTI files with correct affines, built from healthy synthetic subjects unless noted):

* ``wrong_contrast_pd``: the T1w slot holds a proton-density-weighted image (T2w and FLAIR are normal).
* ``inverted_t1w``: the T1w slot holds an intensity-inverted T1w image (CSF bright, white matter dark).
* ``reoriented_pir``: a healthy subject stored in PIR voxel order (the affine keeps world positions right).
* ``anisotropic``: thick slices (4x the in-plane spacing along z, averaged), e.g. 1x1x4 mm at full size.
* ``motion_ghosting``: strong phase-encode ghosting from simulated inter-shot motion (k-space phase errors).
* ``heavy_noise``: Rician noise at ~25 % of the white-matter signal.
* ``ct_head``: a real head CT slice (pydicom-data ``693_UNCI.dcm``, Hounsfield units) extruded into a small
  dome-shaped 3-D volume; not skull-stripped; every contrast slot holds the CT.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from medood.data.demo.brain import BrainTemplate, Subject, synthesize_subject
from medood.data.demo.procedural import random_crop
from medood.data.errors import DataError

__all__ = [
    "BRAIN_OOD_KINDS",
    "FAR_OOD_GROUPS",
    "ID_AFTER_PREPROCESSING",
    "T1W_ONLY_KINDS",
    "dicom_slice",
    "far_ood_generator",
    "far_ood_sources",
    "make_brain_ood",
    "ood_contrasts",
]

logger = logging.getLogger(__name__)

BRAIN_OOD_KINDS: tuple[str, ...] = (
    "wrong_contrast_pd",
    "inverted_t1w",
    "reoriented_pir",
    "anisotropic",
    "motion_ghosting",
    "heavy_noise",
    "ct_head",
)
#: OOD kinds whose T2w and FLAIR slots hold normal images (only the T1w slot is out of distribution).
T1W_ONLY_KINDS: tuple[str, ...] = ("wrong_contrast_pd", "inverted_t1w")
#: Generated kinds that are **in distribution after preprocessing** (every brain bundle reorients to RAS, so a healthy
#: subject stored PIR is an ordinary healthy volume). The one definition every benchmark set, bundle evaluation and
#: bench script uses: these kinds are never an OOD case (:func:`ood_contrasts` gives them no slot).
ID_AFTER_PREPROCESSING: tuple[str, ...] = ("reoriented_pir",)


def ood_contrasts(kind: str, contrasts: Sequence[str]) -> tuple[str, ...]:
    """The contrast slots of a generated brain OOD case that hold an OOD image after preprocessing.

    Args:
        kind: the case's ``ood_type``.
        contrasts: the task's contrast slots.

    Returns:
        ``()`` for :data:`ID_AFTER_PREPROCESSING` kinds; only ``T1w`` (if listed) for :data:`T1W_ONLY_KINDS`;
        otherwise every slot of ``contrasts``.
    """
    if kind in ID_AFTER_PREPROCESSING:
        return ()
    if kind in T1W_ONLY_KINDS:
        return tuple(c for c in contrasts if c == "T1w")
    return tuple(contrasts)


@functools.lru_cache(maxsize=16)
def dicom_slice(name: str) -> np.ndarray:
    """Read one image of a pydicom / pydicom-data test file as a float32 2-D (or RGB ``(H, W, 3)``) array.

    MONOCHROME1 images are inverted so that bright means dense; multi-frame files give their first frame;
    the rescale slope/intercept is applied (CT in Hounsfield units).

    Args:
        name: test-file name, e.g. ``"693_UNCI.dcm"``.

    Returns:
        The pixel data as float32.

    Raises:
        DataError: the file is not installed (pydicom-data missing) or cannot be decoded.
    """
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        raise DataError(name, "DICOM test file not found offline", "pip install pydicom-data")
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as err:  # pydicom raises many types for undecodable data
        raise DataError(path, f"cannot decode the pixel data ({err})") from err
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return pixels


#: Real far-OOD 2-D sources for the 2-D sets: (pydicom-data file, what it shows).
_DICOM_SOURCES: tuple[tuple[str, str], ...] = (
    ("RG1_UNCI.dcm", "CR chest X-ray"),
    ("RG3_UNCI.dcm", "CR extremity X-ray"),
    ("693_UNCI.dcm", "CT head"),
    ("MR2_UNCI.dcm", "MR shoulder"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR abdomen"),
    ("US1_UNCI.dcm", "ultrasound"),
)


def _window(pixels: np.ndarray) -> np.ndarray:
    """Robust 1-99.5 percentile window to [0, 1]; RGB is kept, grey becomes 3 identical channels."""
    lo, hi = np.percentile(pixels, [1.0, 99.5])
    unit = np.clip((pixels - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    return unit if unit.ndim == 3 else np.repeat(unit[..., None], 3, axis=-1)


@functools.lru_cache(maxsize=1)
def far_ood_sources() -> dict[str, np.ndarray]:
    """Real non-target images (float32 RGB in [0, 1]) for far-OOD crops: pydicom-data slices + skimage fundus.

    Returns:
        ``{"<file or name>": image}``; sources that cannot be loaded are skipped with a warning.
    """
    from skimage import data as skdata

    out: dict[str, np.ndarray] = {}
    for name, _what in _DICOM_SOURCES:
        try:
            out[name] = _window(dicom_slice(name))
        except DataError as err:
            logger.warning("far-OOD source skipped: %s", err)
    out["skimage_retina"] = skdata.retina().astype(np.float32) / 255.0
    return out


#: Far-OOD kinds of the 2-D sets -> the real sources they crop from.
FAR_OOD_GROUPS: dict[str, tuple[str, ...]] = {
    "xray": ("RG1_UNCI.dcm", "RG3_UNCI.dcm"),
    "ct_mr": ("693_UNCI.dcm", "MR2_UNCI.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"),
    "ultrasound": ("US1_UNCI.dcm",),
    "fundus": ("skimage_retina",),
}


def far_ood_generator(group: str) -> Callable[[np.random.Generator, str], np.ndarray]:
    """Image generator for a 2-D far-OOD kind: a random crop (15-40 % of the side) of one of its real sources.

    Args:
        group: key of :data:`FAR_OOD_GROUPS`.

    Returns:
        ``gen(rng, split) -> float32 RGB crop in [0, 1]``.
    """
    names = FAR_OOD_GROUPS[group]

    def gen(rng: np.random.Generator, split: str) -> np.ndarray:
        sources = far_ood_sources()
        available = [n for n in names if n in sources] or sorted(sources)
        return random_crop(sources[available[int(rng.integers(len(available)))]], rng)

    return gen


def _ghost(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Phase-encode (y) ghosting from inter-shot motion.

    Every other k-space line, and a random quarter of the others, is acquired with the head translated by a few
    voxels (a linear phase ramp).
    """
    k = np.fft.fft(volume, axis=1)
    ny = volume.shape[1]
    freq = np.fft.fftfreq(ny)
    lines = np.ones(ny, dtype=np.complex128)
    moved = np.zeros(ny, dtype=bool)
    moved[::2] = True
    moved |= rng.random(ny) < 0.25
    shifts = rng.uniform(4.0, 9.0, ny)  # voxels of translation per moved line
    lines[moved] = np.exp(-2j * np.pi * freq[moved] * np.asarray(shifts)[moved])
    return np.abs(np.fft.ifft(k * lines[None, :, None], axis=1)).astype(np.float32)


def _reorient_pir(subject: Subject) -> Subject:
    """Store the voxels in PIR order (i: posterior, j: inferior, k: right) with a matching affine."""

    def pir(volume: np.ndarray) -> np.ndarray:
        # RAS voxel axes (x, y, z) -> (y reversed, z reversed, x) = PIR
        return np.ascontiguousarray(np.transpose(volume, (1, 2, 0))[::-1, ::-1, :])

    shape = subject.brainmask.shape
    # voxel (p, i, r) holds RAS voxel (r, Y-1-p, Z-1-i): that index map, as an affine, precedes the RAS affine.
    perm = np.zeros((4, 4))
    perm[0, 2] = 1.0
    perm[1, 0], perm[1, 3] = -1.0, shape[1] - 1
    perm[2, 1], perm[2, 3] = -1.0, shape[2] - 1
    perm[3, 3] = 1.0
    return Subject(
        images={c: pir(v) for c, v in subject.images.items()},
        brainmask=pir(subject.brainmask),
        lesion=pir(subject.lesion),
        lesion_type=subject.lesion_type,
        affine=subject.affine @ perm,
        params=subject.params,
    )


def _thick_slices(subject: Subject, factor: int = 4) -> Subject:
    """Average blocks of ``factor`` slices along z (thick-slice acquisition); the affine scales z accordingly."""
    nz = subject.brainmask.shape[2] // factor * factor

    def thick(volume: np.ndarray) -> np.ndarray:
        v = volume[:, :, :nz].astype(np.float32)
        return v.reshape(v.shape[0], v.shape[1], nz // factor, factor).mean(axis=-1)

    affine = subject.affine.copy()
    affine[:3, 2] *= factor
    affine[:3, 3] += subject.affine[:3, 2] * (factor - 1) / 2.0  # voxel centre = centre of its block
    return Subject(
        images={c: thick(v) for c, v in subject.images.items()},
        brainmask=(thick(subject.brainmask) >= 0.5).astype(np.uint8),
        lesion=(thick(subject.lesion) >= 0.5).astype(np.uint8),
        lesion_type=subject.lesion_type,
        affine=affine,
        params=subject.params,
    )


def _ct_head(spacing: float) -> Subject:
    """Extrude the real CT head slice into a dome-shaped volume (HU, ``spacing`` mm in-plane, 5 mm slices)."""
    hu = dicom_slice("693_UNCI.dcm")
    pixel_mm = 0.478516  # PixelSpacing of 693_UNCI.dcm
    plane = ndi.zoom(hu, pixel_mm / spacing, order=1, mode="nearest").astype(np.float32)
    n_slices, dz = 24, 5.0
    centre = (np.array(plane.shape) - 1) / 2.0
    slices = []
    for k in range(n_slices):
        scale = np.sqrt(max(1.0 - ((k + 0.5) / n_slices) ** 2, 0.05))  # the head narrows towards the vertex
        matrix = np.eye(2) / scale
        offset = centre - matrix @ centre
        slices.append(ndi.affine_transform(plane, matrix, offset=offset, order=1, cval=-1024.0))
    volume = np.clip(np.stack(slices, axis=-1), -1024.0, 3071.0)
    # pixel rows run anterior->posterior, columns right->left (DICOM LPS): i -> -x, j -> -y in RAS
    n_i, n_j = plane.shape[1], plane.shape[0]
    affine = np.diag([-spacing, -spacing, dz, 1.0])
    affine[:3, 3] = [spacing * (n_i - 1) / 2.0, spacing * (n_j - 1) / 2.0, -20.0]
    data = np.ascontiguousarray(np.transpose(volume, (1, 0, 2)))
    # rough "brain" mask: soft tissue (0-100 HU) inside the head, away from the skull
    head = ndi.binary_fill_holes(data > -300.0)
    brain = ndi.binary_erosion(head & (data > 0.0) & (data < 100.0), iterations=2)
    images = {"T1w": data, "T2w": data, "FLAIR": data}
    return Subject(images, brain.astype(np.uint8), np.zeros(data.shape, np.uint8), "none", affine, {"ct": 1.0})


def make_brain_ood(kind: str, template: BrainTemplate, seed: tuple[int, ...]) -> tuple[Subject, str]:
    """Build one OOD brain case.

    Args:
        kind: one of :data:`BRAIN_OOD_KINDS`.
        template: from :func:`medood.data.demo.brain.load_template`.
        seed: subject seed of the underlying healthy subject.

    Returns:
        The case (``images`` has T1w, T2w and FLAIR slots) and a one-line description.

    Raises:
        ValueError: unknown kind.
    """
    rng = np.random.default_rng([*seed, 99])
    builders: dict[str, Callable[[], tuple[Subject, str]]] = {
        "wrong_contrast_pd": lambda: _wrong_contrast(template, seed),
        "inverted_t1w": lambda: _inverted(synthesize_subject(template, seed)),
        "reoriented_pir": lambda: (_reorient_pir(synthesize_subject(template, seed)), "healthy subject stored PIR"),
        "anisotropic": lambda: (_thick_slices(synthesize_subject(template, seed)), "thick slices (4x z spacing)"),
        "motion_ghosting": lambda: _ghosted(synthesize_subject(template, seed), rng),
        "heavy_noise": lambda: _noisy(template, seed, rng),
        "ct_head": lambda: _ct_case(template.spacing),
    }
    if kind not in builders:
        raise ValueError(f"unknown brain OOD kind {kind!r}; expected one of {list(BRAIN_OOD_KINDS)}")
    return builders[kind]()


def _wrong_contrast(template: BrainTemplate, seed: tuple[int, ...]) -> tuple[Subject, str]:
    subject = synthesize_subject(template, seed, contrasts=("PDw", "T2w", "FLAIR"))
    subject.images = {"T1w": subject.images["PDw"], "T2w": subject.images["T2w"], "FLAIR": subject.images["FLAIR"]}
    return subject, "proton-density-weighted image in the T1w slot"


def _inverted(subject: Subject) -> tuple[Subject, str]:
    t1 = subject.images["T1w"]
    inside = subject.brainmask > 0
    subject.images["T1w"] = (
        np.where(inside, float(np.percentile(t1[inside], 99.5)) - t1, 0.0).clip(0).astype(np.float32)
    )
    return subject, "intensity-inverted T1w image in the T1w slot"


def _ghosted(subject: Subject, rng: np.random.Generator) -> tuple[Subject, str]:
    subject.images = {c: _ghost(v, rng) for c, v in subject.images.items()}
    return subject, "strong phase-encode motion ghosting on every contrast"


def _noisy(template: BrainTemplate, seed: tuple[int, ...], rng: np.random.Generator) -> tuple[Subject, str]:
    subject = synthesize_subject(template, seed)
    for contrast, volume in subject.images.items():
        inside = subject.brainmask > 0
        sigma = 0.25 * float(np.median(volume[inside]))
        noisy = np.hypot(volume + rng.normal(0.0, sigma, volume.shape), rng.normal(0.0, sigma, volume.shape))
        subject.images[contrast] = (noisy * inside).astype(np.float32)
    return subject, "Rician noise at ~25 % of the median brain signal on every contrast"


def _ct_case(spacing: float) -> tuple[Subject, str]:
    return _ct_head(max(spacing, 1.0)), "real head CT slice (pydicom-data 693_UNCI.dcm, HU) extruded to 3-D"
