"""A PNG montage of the most anomalous slices of a bundle run, and the overlay tile it (and the report) draw."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

from medood.data.image2d import overlay_rgb
from medood.io import run_folder as rf
from medood.utils.io import atomic_path, case_name

__all__ = ["overlay_tile", "worst_slices_montage"]

logger = logging.getLogger(__name__)


def _canonical(path: str | os.PathLike[str]) -> np.ndarray:
    """The volume in RAS voxel order (so that axis 2 is axial whatever the file's orientation)."""
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj, dtype=np.float32)  # type: ignore[arg-type]


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def overlay_tile(
    image: np.ndarray, amap: np.ndarray, lesion: np.ndarray | None, map_range: tuple[float, float] | None
) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 tile: a 2D slice (grey), its map in hot colours over ``map_range``, lesion outline.

    The slice is a slice of a RAS volume, shown in **radiological convention** as 3D Slicer shows it: its first
    axis (towards the patient's right) runs right-to-left, so the patient's right is on the image's left, and its
    second bottom-up (anterior up for an axial slice); ``R`` and ``L`` mark the sides. ``map_range`` is the run's
    fixed healthy-data window, never the slice's own min-max.
    """
    brain = image[image > 0]
    window = (0.0, float(np.percentile(brain, 99.5))) if brain.size else None
    rgb = overlay_rgb(image.T[::-1, ::-1], amap.T[::-1, ::-1], window, map_range)
    if lesion is not None:
        rgb[_outline(lesion.T[::-1, ::-1] > 0.5)] = (0, 255, 0)
    return _side_markers(rgb)


def _side_markers(rgb: np.ndarray) -> np.ndarray:
    """``R`` at the left edge and ``L`` at the right edge of a radiological tile (patient's right on the left)."""
    if min(rgb.shape[:2]) < 12:
        return rgb
    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    draw.text((1, 1), "R", fill=(255, 255, 0))
    draw.text((rgb.shape[1] - 7, 1), "L", fill=(255, 255, 0))
    return np.asarray(img)


def worst_slices_montage(
    output_dir: str | os.PathLike[str],
    cases: Sequence[dict[str, Any]],
    n: int = 12,
    columns: int = 4,
    map_range: tuple[float, float] | None = None,
    mask_key: str = "label",
    filename: str = "worst_slices.png",
    scale: int = 2,
) -> Path | None:
    """Write a PNG montage of the ``n`` axial slices with the highest maximum map value over all cases.

    Each tile shows the input slice (grey), the anomaly map over it (hot colours, ``map_range`` fixed for the
    whole montage: take it from healthy calibration, e.g. ``(threshold, 4 * threshold)``) and, when the case
    has a lesion mask, its outline in green. Tiles are labelled ``case z=slice``.

    Args:
        output_dir: the bundle's output folder (holds ``<case>_anomaly_map.nii.gz``); the PNG goes there too.
        cases: the datalist (``{"image": path, mask_key: path?}``).
        n: number of slices. Defaults to 12.
        columns: tiles per row. Defaults to 4.
        map_range: map values shown transparent / full colour; ``None`` = (0, the largest value shown).
        mask_key: lesion-mask key of the datalist entries. Defaults to ``"label"``.
        filename: output file name. Defaults to ``"worst_slices.png"``.
        scale: pixel upscaling of every tile. Defaults to 2.

    Returns:
        The PNG path, or ``None`` when no map was found.
    """
    out = Path(output_dir)
    ranked: list[tuple[float, str, int, dict[str, Any]]] = []
    for c in cases:
        name = case_name(c["image"])
        amap_path = out / rf.map_file(name)
        if not amap_path.is_file():
            continue
        amap = _canonical(amap_path)
        per_slice = amap.reshape(-1, amap.shape[2]).max(0)
        ranked.extend((float(v), name, z, c) for z, v in enumerate(per_slice))
    if not ranked:
        logger.warning("no anomaly maps in %s: no montage written", out)
        return None
    ranked.sort(key=lambda r: -r[0])
    chosen = ranked[:n]
    hi = map_range if map_range is not None else (0.0, max(r[0] for r in chosen) or 1.0)
    tiles = []
    for value, name, z, c in chosen:
        image = _canonical(c["image"])[:, :, z]
        amap = _canonical(out / rf.map_file(name))[:, :, z]
        lesion = _canonical(c[mask_key])[:, :, z] if c.get(mask_key) else None
        tile = Image.fromarray(overlay_tile(image, amap, lesion, hi)).resize(
            (image.shape[0] * scale, image.shape[1] * scale), Image.Resampling.NEAREST
        )
        ImageDraw.Draw(tile).text((3, 3), f"{name} z={z} max={value:.3g}", fill=(255, 255, 0))
        tiles.append(np.asarray(tile))
    h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    canvas = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, col = divmod(i, columns)
        canvas[r * h : r * h + t.shape[0], col * w : col * w + t.shape[1]] = t
    dest = out / filename
    with atomic_path(dest) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return dest
