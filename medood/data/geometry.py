"""Voxel-to-world geometry checks shared by the NIfTI and DICOM readers.

A map is only useful if it overlays its scan, so the geometry a reader returns must be the file's own and
physically plausible. :func:`check_affine` refuses, with a :class:`~medood.utils.errors.DataError` naming the
file:

* an affine with NaN / Inf entries;
* a zero voxel spacing (an axis of length 0) or a singular matrix (two axes parallel, or all zero);
* a spacing outside :data:`SPACING_RANGE_MM` (``1e6`` mm voxels come from a unit or export error);
* a non-orthogonal (sheared) voxel grid: MONAI's resampling, nibabel's orientation codes and most viewers assume
  orthogonal axes, and a gantry-tilted series must be resampled first (e.g. dcm2niix's ``_Tilt_`` output).
"""

from __future__ import annotations

import numpy as np

from medood.data._files import PathLike
from medood.utils.errors import DataError

__all__ = ["MAX_SHEAR_COS", "SPACING_RANGE_MM", "check_affine", "describe_spacing"]

#: Accepted voxel spacing in mm (0.1 µm to 1 m).
SPACING_RANGE_MM = (1e-4, 1e3)
#: Largest accepted |cos| of the angle between two voxel axes (1e-3: within 0.06° of a right angle).
MAX_SHEAR_COS = 1e-3


def describe_spacing(spacing: np.ndarray) -> str:
    """``"2 × 0 × 2 mm"``."""
    return " × ".join(f"{float(s):.4g}" for s in spacing) + " mm"


def check_affine(path: PathLike, affine: np.ndarray | None, spatial_dims: int = 3) -> None:
    """Check a 4×4 voxel-to-world affine (RAS or LPS, in mm).

    Args:
        path: the file the affine belongs to (for the message).
        affine: the matrix; only its first ``spatial_dims`` columns are checked.
        spatial_dims: number of image axes (2 for a single slice). Defaults to 3.

    Raises:
        DataError: non-finite entries, a zero or absurd spacing, a singular or a sheared matrix.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise DataError(path, f"has an affine of shape {a.shape}, expected 4×4")
    if not np.isfinite(a).all():
        raise DataError(path, "has NaN or infinite entries in its affine (voxel-to-world matrix)")
    axes = a[:3, :spatial_dims]
    spacing = np.linalg.norm(axes, axis=0)
    if not spacing.any():
        raise DataError(path, "has a singular affine: every voxel axis has length 0", "the header geometry is empty")
    lo, hi = SPACING_RANGE_MM
    if (spacing == 0).any():
        raise DataError(path, f"has a zero voxel spacing ({describe_spacing(spacing)})", "fix the header geometry")
    if (spacing < lo).any() or (spacing > hi).any():
        raise DataError(
            path,
            f"has an absurd voxel spacing ({describe_spacing(spacing)}; accepted {lo:g} to {hi:g} mm)",
            "check the header's units and spacing",
        )
    direction = axes / spacing
    gram = direction.T @ direction
    off = np.abs(gram - np.eye(spatial_dims))
    if spatial_dims == 3 and abs(np.linalg.det(direction)) < 1e-6:
        raise DataError(path, "has a singular affine: its voxel axes are parallel (not a 3D grid)")
    if off.max() > MAX_SHEAR_COS:
        i, j = np.unravel_index(int(np.argmax(off)), off.shape)
        angle = float(np.degrees(np.arccos(np.clip(gram[i, j], -1.0, 1.0))))
        raise DataError(
            path,
            f"has a non-orthogonal (sheared) affine: voxel axes {i} and {j} meet at {angle:.2f}°, not 90°",
            "resample it to an orthogonal grid first (e.g. a gantry-tilt-corrected export)",
        )
