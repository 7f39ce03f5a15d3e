"""MR signal synthesis for the demo brain volumes: tissue relaxation values, sequences and scanner effects.

Healthy tissue values (1.5 T) are the BrainWeb simulator parameters (Kwan, Evans & Pike, "MRI simulation-based
evaluation of image-processing and classification methods", IEEE TMI 18(11), 1999; Cocosco et al., NeuroImage 5,
1997): CSF T1/T2/PD = 2569 ms / 329 ms / 1.0, grey matter 833 / 83 / 0.86, white matter 500 / 70 / 0.77, and the
BrainWeb "MS lesion" class 752 / 237 / 0.76. The other lesion tissues (oedema, necrotic tumour core, enhancing
rim, haemorrhage-like and haemosiderin/calcification-like) are illustrative values chosen within the ranges
reported for those tissues at 1.5 T (long T1 and T2 for oedema and necrosis, short T1 after gadolinium, short T1
plus long T2 for subacute methaemoglobin, low PD and very short T2 for haemosiderin / calcification); they are
not measurements.

Signals use the textbook steady-state equations (e.g. Haacke et al., "Magnetic Resonance Imaging: Physical
Principles and Sequence Design", 1999):

* spin echo: ``S = PD * (1 - exp(-TR/T1)) * exp(-TE/T2)``
* inversion recovery (FLAIR): ``S = PD * |1 - 2 exp(-TI/T1) + exp(-TR/T1)| * exp(-TE/T2)``, with TI chosen to
  null CSF.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CONTRASTS",
    "LESION_TISSUES",
    "PROTOCOLS",
    "TISSUES",
    "Protocol",
    "Tissue",
    "add_rician_noise",
    "signal",
    "smooth_field",
]


@dataclass(frozen=True)
class Tissue:
    """Relaxation parameters of one tissue.

    Args:
        t1: longitudinal relaxation time in ms.
        t2: transverse relaxation time in ms.
        pd: relative proton density (CSF = 1).
    """

    t1: float
    t2: float
    pd: float

    def jittered(self, rng: np.random.Generator, rel_sd: float) -> Tissue:
        """Return a copy with each parameter multiplied by ``1 + N(0, rel_sd)`` (clipped to +-3 sd)."""
        f = 1.0 + np.clip(rng.normal(0.0, rel_sd, 3), -3 * rel_sd, 3 * rel_sd)
        return Tissue(self.t1 * float(f[0]), self.t2 * float(f[1]), self.pd * float(f[2]))


@dataclass(frozen=True)
class Protocol:
    """Acquisition parameters of one contrast.

    Args:
        kind: ``"se"`` (spin echo) or ``"ir"`` (inversion recovery).
        tr: repetition time in ms.
        te: echo time in ms.
        ti: inversion time in ms (``"ir"`` only). Defaults to 0.
    """

    kind: str
    tr: float
    te: float
    ti: float = 0.0


#: Healthy tissues, BrainWeb 1.5 T values (see module docstring).
TISSUES: dict[str, Tissue] = {
    "csf": Tissue(2569.0, 329.0, 1.00),
    "gm": Tissue(833.0, 83.0, 0.86),
    "wm": Tissue(500.0, 70.0, 0.77),
}

#: Lesion tissues. ``ms`` is BrainWeb's MS-lesion class; the others are illustrative (see module docstring).
LESION_TISSUES: dict[str, Tissue] = {
    "ms": Tissue(752.0, 237.0, 0.76),  # hyper on T2w/FLAIR, mildly hypo on T1w
    "oedema": Tissue(1100.0, 180.0, 0.88),  # hypo on T1w, hyper on T2w/FLAIR
    "necrotic_core": Tissue(2000.0, 250.0, 0.95),  # dark on T1w, bright on T2w
    "enhancing_rim": Tissue(400.0, 110.0, 0.85),  # bright on T1w (gadolinium shortens T1)
    "hyper": Tissue(300.0, 200.0, 1.00),  # methaemoglobin-like: bright on every contrast
    "hypo": Tissue(900.0, 35.0, 0.35),  # haemosiderin/calcification-like: dark on every contrast
}


def _flair_ti(tr: float, csf_t1: float) -> float:
    """Inversion time that nulls CSF: ``1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0``."""
    return csf_t1 * math.log(2.0 / (1.0 + math.exp(-tr / csf_t1)))


#: Clinical-style 1.5 T protocols: T1w spin echo, T2w fast/turbo spin echo, FLAIR and (for OOD) a PD-weighted SE.
PROTOCOLS: dict[str, Protocol] = {
    "T1w": Protocol("se", tr=500.0, te=12.0),
    "T2w": Protocol("se", tr=4000.0, te=100.0),
    "FLAIR": Protocol("ir", tr=9000.0, te=120.0, ti=_flair_ti(9000.0, TISSUES["csf"].t1)),
    "PDw": Protocol("se", tr=3000.0, te=15.0),
}

#: The contrasts every demo subject has, in ``dataset.json`` modality order.
CONTRASTS: tuple[str, ...] = ("T1w", "T2w", "FLAIR")


def signal(tissue: Tissue, protocol: Protocol) -> float:
    """Steady-state magnitude signal of a pure tissue.

    Args:
        tissue: relaxation parameters.
        protocol: acquisition parameters.

    Returns:
        The signal in units of the equilibrium magnetisation of CSF.

    Raises:
        ValueError: unknown ``protocol.kind``.
    """
    t2_decay = math.exp(-protocol.te / tissue.t2)
    recovery = math.exp(-protocol.tr / tissue.t1)
    if protocol.kind == "se":
        return tissue.pd * (1.0 - recovery) * t2_decay
    if protocol.kind == "ir":
        return tissue.pd * abs(1.0 - 2.0 * math.exp(-protocol.ti / tissue.t1) + recovery) * t2_decay
    raise ValueError(f"unknown sequence kind {protocol.kind!r}; expected 'se' or 'ir'")


@functools.lru_cache(maxsize=64)
def _basis(n: int, n_ctrl: int) -> np.ndarray:
    """Gaussian radial-basis interpolation matrix ``(n, n_ctrl)`` with rows summing to one."""
    centres = np.linspace(0.0, n - 1.0, n_ctrl)
    width = (n - 1.0) / max(n_ctrl - 1, 1)
    x = np.arange(n, dtype=np.float64)[:, None]
    w = np.exp(-0.5 * ((x - centres[None, :]) / width) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def smooth_field(
    shape: tuple[int, ...], n_ctrl: int | tuple[int, ...], rng: np.random.Generator, sd: float = 1.0
) -> np.ndarray:
    """A smooth random field: Gaussian control-point values interpolated with separable Gaussian bases.

    Costs a few multiply-adds per voxel (no large convolutions), so it is cheap even at 1 mm.

    Args:
        shape: output shape (2D or 3D).
        n_ctrl: control points per axis (int for all axes); about ``extent / n_ctrl`` is the correlation length.
        rng: random generator.
        sd: standard deviation of the control-point values. Defaults to 1.

    Returns:
        float32 array of ``shape``.
    """
    ctrl = (n_ctrl,) * len(shape) if isinstance(n_ctrl, int) else tuple(n_ctrl)
    field = rng.normal(0.0, sd, ctrl).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, ctrl)):
        field = np.moveaxis(np.tensordot(field, _basis(n, c), axes=([axis], [1])), -1, axis)
    return np.ascontiguousarray(field)


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise (Rician distributed).

    Args:
        image: noise-free magnitude image.
        sigma: standard deviation of each of the real and imaginary noise channels.
        rng: random generator.

    Returns:
        float32 noisy magnitude image.
    """
    sigma32 = np.float32(sigma)
    real = image.astype(np.float32) + sigma32 * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma32 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)
