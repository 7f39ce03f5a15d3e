"""Candidate volume scores of a voxel anomaly map: a registry of pure functions ``(map, brain, flagged) -> float``.

Each score reads one map (a 3D tensor), the brain mask (bool, same shape) and the detector's flagged volume (the
in-painted / resampled tokens at voxel resolution, ``> 0`` = flagged; scores that do not use it ignore it). Larger
is more anomalous. :data:`VOLUME_SCORES` holds the candidates ``scripts/bench_mim_shift.py`` sweeps, in the
column order of its page, and :data:`VOLUME_SCORE_LABELS` their column labels; the constructors
(:func:`top_k`, :func:`self_normalised`, :func:`local_contrast`, :func:`region`) make others.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage as ndi

from medood.detectors.base_restoration import SliceRestorationDetector
from medood.utils.reduce import reduce_map, rim_eroded

__all__ = [
    "VOLUME_SCORES",
    "VOLUME_SCORE_LABELS",
    "VolumeScore",
    "flagged_largest",
    "flagged_mass",
    "local_contrast",
    "region",
    "self_normalised",
    "top_k",
]

#: ``(map, brain mask, flagged volume) -> score``
VolumeScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float]


def _top(amap: torch.Tensor, fraction: float, mask: torch.Tensor) -> float:
    """Mean of the top ``fraction`` of ``mask``'s voxels (:func:`~medood.utils.reduce.reduce_map`)."""
    return float(reduce_map(amap[None, None], "topk", fraction, mask[None, None]))


def top_k(fraction: float, rim: int = 0) -> VolumeScore:
    """Mean of the top ``fraction`` of the brain's map values, the brain first eroded by ``rim`` voxels.

    The erosion is :func:`~medood.utils.reduce.rim_eroded` (``rim`` 6-connected steps, as the detectors'
    ``score_erode``): the rim's partial-volume values are left out of the score.
    """

    def score(amap: torch.Tensor, brain: torch.Tensor, flagged: torch.Tensor) -> float:
        return _top(amap, fraction, rim_eroded(brain[None, None], rim)[0, 0])

    return score


def self_normalised(fraction: float) -> VolumeScore:
    """The top-``fraction`` mean over the median of the volume's own positive brain map values.

    A site-wide offset of the map cancels; the median is floored at ``1e-6``.
    """

    def score(amap: torch.Tensor, brain: torch.Tensor, flagged: torch.Tensor) -> float:
        support = amap[brain & (amap > 0)]
        median = float(support.median()) if support.numel() else 0.0
        return _top(amap, fraction, brain) / max(median, 1e-6)

    return score


def local_contrast(sigma: float, fraction: float = 0.005) -> VolumeScore:
    """The top-``fraction`` mean of the map minus its local background.

    The background is the brain-normalised Gaussian mean of the map, ``G(map) / max(G(brain), 1e-3)`` (``sigma``
    in voxels, :func:`scipy.ndimage.gaussian_filter`).
    """

    def score(amap: torch.Tensor, brain: torch.Tensor, flagged: torch.Tensor) -> float:
        a, w = amap.numpy(), brain.numpy().astype(np.float32)
        local = a - ndi.gaussian_filter(a, sigma) / np.maximum(ndi.gaussian_filter(w, sigma), 1e-3)
        return _top(torch.from_numpy(local), fraction, brain)

    return score


def region(level: float) -> VolumeScore:
    """Cluster extent: voxels of the largest 26-connected brain region of ``map > level``.

    The detector's own :meth:`~medood.detectors.base_restoration.SliceRestorationDetector.region_score`.
    """

    def score(amap: torch.Tensor, brain: torch.Tensor, flagged: torch.Tensor) -> float:
        return float(SliceRestorationDetector.region_score(amap[None, None], level, brain[None, None])[0])

    return score


def flagged_largest(amap: torch.Tensor, brain: torch.Tensor, flagged: torch.Tensor) -> float:
    """Voxels of the largest 6-connected region of flagged brain voxels (0 when none is flagged)."""
    lab, n = ndi.label(((flagged > 0) & brain).numpy())
    return float(np.bincount(lab.ravel())[1:].max()) if n else 0.0


def flagged_mass(amap: torch.Tensor, brain: torch.Tensor, flagged: torch.Tensor) -> float:
    """The map's sum over the flagged brain voxels per brain voxel."""
    return float((amap * ((flagged > 0) & brain)).sum() / brain.sum().clamp_min(1))


VOLUME_SCORES: dict[str, VolumeScore] = {
    "topk_0.001": top_k(0.001),
    "topk_0.01": top_k(0.01),
    "topk_0.001_rim5": top_k(0.001, rim=5),
    "selfnorm_0.001": self_normalised(0.001),
    "local_8": local_contrast(8.0),
    "flagged_largest": flagged_largest,
    "flagged_mass": flagged_mass,
    "region_0.1": region(0.1),
    "region_0.2": region(0.2),
    "region_0.3": region(0.3),
}
#: the page's column label of each :data:`VOLUME_SCORES` entry
VOLUME_SCORE_LABELS = {
    "topk_0.001": "top 0.1 %",
    "topk_0.01": "top 1 %",
    "topk_0.001_rim5": "top 0.1 % off a 5-voxel rim",
    "selfnorm_0.001": "top 0.1 % / own median",
    "local_8": "top 0.5 % above its 8-voxel background",
    "flagged_largest": "largest flagged region",
    "flagged_mass": "map mass in flagged",
    "region_0.1": "largest region > 0.1",
    "region_0.2": "> 0.2",
    "region_0.3": "> 0.3",
}
