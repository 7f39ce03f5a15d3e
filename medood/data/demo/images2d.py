"""Writer of the 2-D demo classification sets (pathology, dermoscopy, endoscopy).

Each set is described by a :class:`SetSpec`: one image generator per class, per near-OOD kind and per far-OOD kind.
A generator takes a random generator and the split name and returns a float32 RGB image in [0, 1] of any size;
the writer resizes it to ``image_size`` (anti-aliased) and stores an 8-bit RGB PNG. Layout::

    <set>/train/<class>/<class>_0000.png    (also val/, test/)
    <set>/ood_near/<kind>/<kind>_0000.png
    <set>/ood_far/<kind>/<kind>_0000.png
    <set>/dataset.json                       (datalist: training/validation/test with integer labels, ood_near/far)
    <set>/README.md

Every image has its own seed ``(seed, set, split, class, index)``, so the output does not depend on the order of
generation and is identical for identical seeds.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medood.data.demo.ood import far_ood_sources
from medood.data.demo.parallel import run_jobs
from medood.data.demo.procedural import resize_rgb
from medood.utils.io import atomic_path, atomic_write_text

__all__ = ["COUNTS_2D", "IMAGE_SIZE", "SETS_2D", "SetSpec", "get_spec", "write_2d_set"]

logger = logging.getLogger(__name__)

Generator = Callable[[np.random.Generator, str], np.ndarray]

#: Default counts: (train, val, test) images per class and images per OOD folder (ood_near, ood_far).
COUNTS_2D: tuple[int, int, int, int] = (60, 15, 15, 40)
#: Default side of the square PNGs, in pixels.
IMAGE_SIZE = 64
#: 2-D set name -> module defining ``SPEC``.
SETS_2D: dict[str, str] = {
    "pathology": "medood.data.demo.pathology",
    "dermoscopy": "medood.data.demo.dermoscopy",
    "endoscopy": "medood.data.demo.endoscopy",
}
_SET_CODE = {"pathology": 1, "dermoscopy": 2, "endoscopy": 3}
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3, "ood_near": 4, "ood_far": 5}


@dataclass(frozen=True)
class SetSpec:
    """Definition of one 2-D set.

    Args:
        name: set name (folder name).
        classes: class name -> generator, in label order.
        ood_near: near-OOD kind -> generator.
        ood_far: far-OOD kind -> generator.
        readme: README body (markdown) describing sources, classes and OOD kinds.
    """

    name: str
    classes: dict[str, Generator]
    ood_near: dict[str, Generator]
    ood_far: dict[str, Generator]
    readme: str


def get_spec(name: str) -> SetSpec:
    """The :class:`SetSpec` of a 2-D set.

    Raises:
        ValueError: unknown set name.
    """
    if name not in SETS_2D:
        raise ValueError(f"unknown 2-D demo set {name!r}; expected one of {sorted(SETS_2D)}")
    return importlib.import_module(SETS_2D[name]).SPEC


def _save_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _make(gen: Generator, seed: tuple[int, ...], split: str, size: int) -> np.ndarray:
    image = gen(np.random.default_rng(list(seed)), split)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"generator for {seed} returned shape {image.shape}, expected (H, W, 3)")
    return resize_rgb(image, size)


def _write_kind(out: Path, name: str, seed: int, size: int, job: tuple[str, str, int, int]) -> list[dict[str, Any]]:
    """Write the ``count`` images of one class/OOD kind; ``job`` = (folder, kind, kind index, count)."""
    folder, kind, index, count = job
    spec = get_spec(name)
    gens = spec.classes if folder in ("train", "val", "test") else getattr(spec, folder)
    entries = []
    for i in range(count):
        rel = f"{folder}/{kind}/{kind}_{i:04d}.png"
        image = _make(gens[kind], (seed, _SET_CODE[name], _SPLIT_CODE[folder], index, i), folder, size)
        _save_png(out / rel, image)
        entries.append({"image": rel, "class": kind, "label": index})
    return entries


def _split_counts(total: int, n_kinds: int) -> list[int]:
    """Spread ``total`` images over ``n_kinds`` folders as evenly as possible."""
    return [total // n_kinds + (1 if k < total % n_kinds else 0) for k in range(n_kinds)]


def write_2d_set(
    name: str,
    out: Path,
    seed: int,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    n_ood: int | None = None,
    image_size: int = IMAGE_SIZE,
    workers: int | None = None,
) -> dict[str, Any]:
    """Build one 2-D set in ``out``.

    Args:
        name: ``"pathology"``, ``"dermoscopy"`` or ``"endoscopy"``.
        out: the set folder (created).
        seed: base seed.
        n_train: training images per class. Defaults to 60.
        n_val: validation images per class. Defaults to 15.
        n_test: test images per class. Defaults to 15.
        n_ood: images per OOD folder (``ood_near`` and ``ood_far`` each, spread over their kinds). Defaults to 40.
        image_size: side of the square PNGs. Defaults to 64.
        workers: worker processes. Defaults to :func:`~medood.data.demo.parallel.default_workers`.

    Returns:
        The datalist written to ``dataset.json``.
    """
    spec = get_spec(name)
    counts = tuple(d if v is None else int(v) for v, d in zip((n_train, n_val, n_test, n_ood), COUNTS_2D))
    start = time.perf_counter()
    jobs = [
        (split, kind, i, n) for split, n in zip(("train", "val", "test"), counts) for i, kind in enumerate(spec.classes)
    ]
    for folder in ("ood_near", "ood_far"):
        kinds = getattr(spec, folder)
        jobs += [(folder, kind, i, n) for i, (kind, n) in enumerate(zip(kinds, _split_counts(counts[3], len(kinds))))]
    far_ood_sources()  # load the real far-OOD images once, before any worker is forked
    results = run_jobs(functools.partial(_write_kind, out, name, seed, image_size), jobs, workers)
    datalist: dict[str, Any] = {
        "name": f"medood-demo-{name}",
        "description": f"medood {name} demo set ({image_size}x{image_size} RGB PNG); see README.md",
        "seed": seed,
        "image_size": [image_size, image_size],
        "classes": list(spec.classes),
    }
    for key, folder in (("training", "train"), ("validation", "val"), ("test", "test")):
        datalist[key] = [e for job, entries in zip(jobs, results) if job[0] == folder for e in entries]
    for folder in ("ood_near", "ood_far"):
        entries = [e for job, es in zip(jobs, results) if job[0] == folder for e in es]
        datalist[folder] = [{"image": e["image"], "ood_type": e["class"]} for e in entries]
    atomic_write_text(out / "dataset.json", json.dumps(datalist, indent=2) + "\n")
    atomic_write_text(out / "README.md", _readme(spec, image_size, counts))  # type: ignore[arg-type]
    n_images = sum(len(r) for r in results)
    logger.info("%s: %d images written in %.1f s", name, n_images, time.perf_counter() - start)
    return datalist


def _readme(spec: SetSpec, size: int, counts: tuple[int, int, int, int]) -> str:
    classes = ", ".join(f"`{c}` (label {i})" for i, c in enumerate(spec.classes))
    return f"""# medood demo data: {spec.name}

{size}x{size} 8-bit RGB PNG images, built offline by `medood data demo`, deterministic per seed.

| folder | content |
|---|---|
| `train/<class>/`, `val/<class>/`, `test/<class>/` | {counts[0]} / {counts[1]} / {counts[2]} images per class |
| `ood_near/<kind>/` | {counts[3]} near-OOD images in all: {", ".join(f"`{k}`" for k in spec.ood_near)} |
| `ood_far/<kind>/` | {counts[3]} far-OOD images in all: {", ".join(f"`{k}`" for k in spec.ood_far)} |
| `dataset.json` | datalist: `training`/`validation`/`test` entries `{{"image", "class", "label"}}`, OOD entries \
`{{"image", "ood_type"}}` |

Classes: {classes}.

{spec.readme}
"""
