"""Embedded demo data, built offline in seconds from images that installed packages ship.

``build_demo(out)`` writes:

* ``brain_mri/``: synthetic T1w/T2w/FLAIR brain MRI from the real MNI152 2009a template (nilearn wheel), healthy
  train/val subjects, test subjects with exact lesion masks and OOD volumes (see :mod:`.brain`, :mod:`.lesions`,
  :mod:`.ood`, :mod:`.brain_set`);
* ``pathology/``: patches of the real scikit-image IHC slide, labelled by stain content (:mod:`.images2d`);
* ``dermoscopy/`` and ``endoscopy/``: procedural look-alikes (:mod:`.procedural2d`).

Everything is deterministic per seed. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from medood.data.demo.brain_set import BRAIN_COUNTS, write_brain_mri
from medood.data.demo.images2d import write_2d_set

__all__ = ["DATASETS", "build_demo"]

logger = logging.getLogger(__name__)

#: Dataset names in build order.
DATASETS: tuple[str, ...] = ("brain_mri", "pathology", "dermoscopy", "endoscopy")
_SIZES = ("small", "full")


def _brain(out: Path, size: str, seed: int, counts: tuple[int | None, ...], workers: int | None) -> None:
    full = tuple(d if g is None else int(g) for g, d in zip(counts, BRAIN_COUNTS[size]))
    write_brain_mri(out, size, seed, full, workers=workers)  # type: ignore[arg-type]


def _builder_2d(name: str) -> Callable[..., None]:
    def build(out: Path, size: str, seed: int, counts: tuple[int | None, ...], workers: int | None) -> None:
        n_train, n_val, n_test, n_ood = counts
        write_2d_set(name, out, seed, n_train, n_val, n_test, n_ood, workers=workers)

    return build


_BUILDERS: dict[str, Callable[..., None]] = {
    "brain_mri": _brain,
    "pathology": _builder_2d("pathology"),
    "dermoscopy": _builder_2d("dermoscopy"),
    "endoscopy": _builder_2d("endoscopy"),
}


def build_demo(
    out: str | os.PathLike[str],
    size: str = "small",
    seed: int = 0,
    only: Sequence[str] | None = None,
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    n_ood: int | None = None,
    workers: int | None = None,
) -> dict[str, Path]:
    """Write the demo datasets under ``out``.

    Args:
        out: output folder (created); each dataset goes to ``out/<name>``.
        size: ``"small"`` (2 mm brain volumes, quick) or ``"full"`` (1 mm, fewer subjects). The 2-D sets are the
            same for both. Defaults to ``"small"``.
        seed: random seed; the same seed gives identical arrays. Defaults to 0.
        only: dataset names to build (subset of :data:`DATASETS`). Defaults to all.
        n_train: brain: healthy training subjects; 2-D: training images per class. Defaults to the size's preset
            (brain small 40, full 12; 2-D 60).
        n_val: brain: validation subjects; 2-D: validation images per class. Defaults to 8 / 4 (brain), 15 (2-D).
        n_test: brain: test subjects (a quarter healthy, the rest with lesions); 2-D: test images per class.
            Defaults to 16 / 8 (brain), 15 (2-D).
        n_ood: brain: OOD volumes (cycling through the OOD kinds); 2-D: images per OOD folder. Defaults to 7
            (brain), 40 (2-D).
        workers: worker processes; the output does not depend on it. Defaults to ``min(2, cpu_count)``.

    Returns:
        ``{name: folder}`` of the datasets written.

    Raises:
        ValueError: unknown size or dataset name.
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {list(_SIZES)}, got {size!r}")
    names = list(DATASETS) if only is None else list(dict.fromkeys(only))
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown demo dataset(s) {unknown}; expected some of {list(DATASETS)}")
    root = Path(out)
    written: dict[str, Path] = {}
    for name in names:
        start = time.perf_counter()
        _BUILDERS[name](root / name, size, int(seed), (n_train, n_val, n_test, n_ood), workers)
        written[name] = root / name
        logger.info("demo %s written to %s in %.1f s", name, root / name, time.perf_counter() - start)
    return written
