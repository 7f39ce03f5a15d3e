"""Odd inputs medood accepts on purpose, each with the conversion its reader documents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medood.data.image2d import read_image_2d
from medood.data.readers import load_volume
from tests.reliability.corpus.images import png
from tests.reliability.corpus.nifti import vol, write_nifti


@dataclass(frozen=True)
class AcceptedKind:
    """An odd input medood loads on purpose; ``check(loaded)`` asserts the documented conversion."""

    name: str
    build: Callable[[Path], Path]
    read: Callable[[Path], Any]
    check: Callable[[Any], None]


def _rgba(tmp: Path) -> Path:
    a = np.zeros((6, 7, 4), np.uint8)
    a[..., 0], a[..., 3] = 200, 0  # fully transparent red
    return png(tmp / "rgba.png", a)


def _palette(tmp: Path) -> Path:
    img = Image.new("P", (5, 4))
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.putpixel((1, 2), 1)
    img.save(tmp / "palette.png")
    return tmp / "palette.png"


def _sixteen_bit(tmp: Path) -> Path:
    Image.fromarray(np.full((4, 5), 40000, np.uint16)).save(tmp / "u16.png")
    return tmp / "u16.png"


def _grey_alpha(tmp: Path) -> Path:
    Image.new("LA", (5, 4), (77, 10)).save(tmp / "la.png")
    return tmp / "la.png"


def _singleton_4d(tmp: Path) -> Path:
    return write_nifti(tmp / "one.nii.gz", vol((8, 9, 10, 1)))


def _assert_rgba(img: Any) -> None:
    assert tuple(img.shape) == (3, 6, 7) and img[0].unique().tolist() == [200.0] and img.meta["original_mode"] == "RGBA"


def _assert_palette(img: Any) -> None:
    assert tuple(img.shape) == (3, 4, 5) and img[:, 2, 1].tolist() == [10.0, 20.0, 30.0]


def _assert_u16(img: Any) -> None:
    assert tuple(img.shape) == (1, 4, 5) and float(img.max()) == 40000.0


def _assert_la(img: Any) -> None:
    assert tuple(img.shape) == (1, 4, 5) and img.unique().tolist() == [77.0]


def _assert_3d(img: Any) -> None:
    assert tuple(img.shape) == (1, 8, 9, 10)


ACCEPTED = [
    AcceptedKind("rgba_png_alpha_dropped", _rgba, read_image_2d, _assert_rgba),
    AcceptedKind("palette_png_to_rgb", _palette, read_image_2d, _assert_palette),
    AcceptedKind("16bit_png_raw_values", _sixteen_bit, read_image_2d, _assert_u16),
    AcceptedKind("grey_alpha_png_to_grey", _grey_alpha, read_image_2d, _assert_la),
    AcceptedKind("nifti_4d_with_one_volume_is_3d", _singleton_4d, load_volume, _assert_3d),
]
