"""Piecewise-linear histogram standardisation of the brain voxels (Nyul, Udupa & Zhang, 2000).

MR intensities have no absolute scale and another scanner or sequence changes the shape of the brain histogram,
not only its scale, which a percentile rescaling (:class:`~medood.transforms.ScaleNonzeroPercentile`) cannot undo.
The standardiser maps the image's own landmarks (percentiles of its non-zero voxels) linearly, piece by piece, onto
standard landmarks learnt once on healthy training volumes (:func:`learn_landmarks`: the mean of their landmarks).
Values beyond the outer landmarks continue the outer segments' slopes (a hyper-intense lesion stays above the
brain), the background stays exactly 0 and the mapping is monotone, so intensity order inside the brain is kept.

No maintained implementation is in the environment (TorchIO's ``HistogramStandardization`` is not a dependency and
MONAI's ``HistogramNormalize`` equalises to a uniform histogram instead of learnt landmarks).

Reference: L. G. Nyul, J. K. Udupa, X. Zhang, "New variants of a method of MRI scale standardization", IEEE TMI
19(2):143-150, 2000.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils.type_conversion import convert_to_tensor

__all__ = ["DEFAULT_PERCENTILES", "HistogramStandardize", "HistogramStandardized", "learn_landmarks"]

#: Nyul's landmarks: 1st and 99th percentiles and the deciles between them.
DEFAULT_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
_MAX_SAMPLE = 2_000_000


def _landmarks(ch: torch.Tensor, percentiles: Sequence[float]) -> torch.Tensor | None:
    nz = ch[ch > 0]
    if nz.numel() < len(percentiles):
        return None
    if nz.numel() > _MAX_SAMPLE:
        nz = nz[torch.randperm(nz.numel(), generator=torch.Generator().manual_seed(0))[:_MAX_SAMPLE]]
    return torch.quantile(nz.double(), torch.tensor(percentiles, dtype=torch.float64) / 100.0)


def learn_landmarks(images: Iterable[torch.Tensor], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> list[float]:
    """The standard landmarks: the mean over ``images`` (channel 0, background 0) of their percentile landmarks.

    Args:
        images: healthy training volumes ``(C, *spatial)``, already in the range the model sees.
        percentiles: landmark percentiles, increasing. Defaults to :data:`DEFAULT_PERCENTILES`.

    Raises:
        ValueError: no image with enough non-zero voxels.
    """
    found = [lm for img in images if (lm := _landmarks(convert_to_tensor(img).float()[0], percentiles)) is not None]
    if not found:
        raise ValueError("learn_landmarks: no image with non-zero (brain) voxels")
    return [float(v) for v in torch.stack(found).mean(0)]


class HistogramStandardize(Transform):
    """Map each channel's non-zero voxels piecewise-linearly from its own landmarks onto ``landmarks``.

    Args:
        landmarks: the standard landmarks (from :func:`learn_landmarks`), strictly increasing; ``None`` turns the
            transform into the identity (a bundle switches standardisation off in its config).
        percentiles: the percentiles they were learnt at. Defaults to :data:`DEFAULT_PERCENTILES`.
    """

    def __init__(self, landmarks: Sequence[float] | None, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> None:
        self.standard: torch.Tensor | None = None
        if landmarks is None:
            return
        if len(landmarks) != len(percentiles) or len(landmarks) < 2:
            raise ValueError(f"{len(landmarks)} landmarks for {len(percentiles)} percentiles (need >= 2 of each)")
        std = torch.tensor(list(landmarks), dtype=torch.float64)
        if not bool((std.diff() > 0).all()) or not all(b > a for a, b in itertools.pairwise(percentiles)):
            raise ValueError("landmarks and percentiles must be strictly increasing")
        self.standard, self.percentiles = std, tuple(float(p) for p in percentiles)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Standardise ``img`` channel-wise; float32, MetaTensor kept, background 0."""
        x = convert_to_tensor(img, track_meta=True).float()
        std = self.standard
        if std is None:
            return x
        out = x.clone()
        for c in range(x.shape[0]):
            ch = x[c]
            src = _landmarks(ch, self.percentiles)
            if src is None:
                continue
            src = torch.cummax(src, 0).values + torch.arange(len(src), dtype=torch.float64) * 1e-9  # strictly up
            v = ch.double()
            seg = (torch.searchsorted(src, v.contiguous()) - 1).clamp(0, len(src) - 2)
            slope = (std[seg + 1] - std[seg]) / (src[seg + 1] - src[seg])
            mapped = (std[seg] + (v - src[seg]) * slope).clamp_min(1e-6)
            out[c] = torch.where(ch > 0, mapped, torch.zeros_like(v)).float()
        return out


class HistogramStandardized(MapTransform):
    """Dictionary version of :class:`HistogramStandardize`."""

    def __init__(
        self,
        keys: KeysCollection,
        landmarks: Sequence[float] | None,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.standardizer = HistogramStandardize(landmarks, percentiles)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Standardise every key."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.standardizer(d[key])
        return d
