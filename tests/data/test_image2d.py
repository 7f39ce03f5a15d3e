"""2D images: (C, H, W) orientation end to end, modes and bit depths, writers, and the rejected files."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImage
from PIL import Image

from medood.data import DataError
from medood.data.image2d import (
    Image2DReader,
    read_image_2d,
    read_map_nifti_2d,
    write_map_nifti_2d,
    write_overlay_png,
    write_png,
)

H, W = 20, 33
MARK = (2, 30)  # (row, column) near the top-right corner


def _marker_png(path: Path) -> Path:
    a = np.full((H, W), 40, np.uint8)
    a[MARK] = 255
    Image.fromarray(a).save(path)
    return path


def test_non_square_round_trip_keeps_rows_and_columns(tmp_path: Path) -> None:
    png = _marker_png(tmp_path / "case.png")
    img = read_image_2d(png)
    assert tuple(img.shape) == (1, H, W)
    assert tuple(int(s) for s in img.meta["spatial_shape"]) == (H, W)
    assert np.unravel_index(int(img[0].argmax()), (H, W)) == MARK

    amap = (img[0] - img[0].min()) / (img[0].max() - img[0].min())  # a "detector" map peaking at the marker
    ov_path = write_overlay_png(img, amap, (0, 255), tmp_path / "case_overlay.png", map_range=(0.0, 2.0))
    overlay = read_image_2d(ov_path)
    assert tuple(overlay.shape) == (3, H, W)
    colour = overlay[0] - overlay[2]  # grey pixels have R == B; the map's orange peak has R >> B
    assert np.unravel_index(int(colour.argmax()), (H, W)) == MARK
    assert float(colour.max()) > 50.0

    nii = write_map_nifti_2d(amap, tmp_path / "case_anomaly_map.nii.gz")
    raw = nib.load(nii)
    assert raw.shape == (W, H, 1)
    np.testing.assert_allclose(raw.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert float(raw.get_fdata()[MARK[1], MARK[0], 0]) == pytest.approx(1.0)
    back = read_map_nifti_2d(nii)
    np.testing.assert_allclose(back, amap.numpy(), atol=1e-6)


def test_map_nifti_overlays_the_png_in_itk_physical_space(tmp_path: Path) -> None:
    """Slicer reads both files through ITK: the marker must map to the same physical point."""
    png = _marker_png(tmp_path / "case.png")
    amap = read_image_2d(png)[0] / 255.0
    nii = write_map_nifti_2d(amap, tmp_path / "case_map.nii.gz")
    itk_png, itk_map = sitk.ReadImage(str(png)), sitk.ReadImage(str(nii))
    col, row = MARK[1], MARK[0]
    assert itk_png.GetSize() == (W, H)
    assert itk_map.GetSize() == (W, H, 1)
    p_png = itk_png.TransformIndexToPhysicalPoint((col, row))
    p_map = itk_map.TransformIndexToPhysicalPoint((col, row, 0))
    np.testing.assert_allclose(p_map[:2], p_png)
    assert itk_map[col, row, 0] == pytest.approx(1.0)
    assert itk_png[col, row] == 255


def test_monai_loadimage_with_image2dreader_matches(tmp_path: Path) -> None:
    png = _marker_png(tmp_path / "case.png")
    img = LoadImage(reader=Image2DReader(), ensure_channel_first=True, image_only=True)(png)
    assert tuple(img.shape) == (1, H, W)
    assert float(img[0, MARK[0], MARK[1]]) == 255.0


@pytest.mark.parametrize(
    ("mode", "suffix", "channels", "original"),
    [
        ("RGB", ".png", 3, "RGB"),
        ("RGB", ".jpg", 3, "RGB"),
        ("RGB", ".tif", 3, "RGB"),
        ("RGBA", ".png", 3, "RGBA"),
        ("P", ".png", 3, "P"),
        ("L", ".bmp", 1, "L"),
        ("1", ".png", 1, "1"),
    ],
)
def test_modes(tmp_path: Path, mode: str, suffix: str, channels: int, original: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert(mode).save(tmp_path / f"x{suffix}")
    img = read_image_2d(tmp_path / f"x{suffix}")
    assert tuple(img.shape) == (channels, H, W)
    assert img.meta["original_mode"] == original
    if suffix == ".png" and mode == "RGB":
        np.testing.assert_array_equal(img.numpy(), np.moveaxis(rgb, -1, 0))


def test_16_bit_png_and_scaling(tmp_path: Path) -> None:
    a = (np.arange(H * W).reshape(H, W) * 97 % 65535).astype(np.uint16)
    write_png(a, tmp_path / "u16.png")
    raw = read_image_2d(tmp_path / "u16.png")
    np.testing.assert_array_equal(raw[0].numpy(), a.astype(np.float32))
    scaled = read_image_2d(tmp_path / "u16.png", scale=True)
    assert float(scaled.max()) == pytest.approx(a.max() / 65535.0)


def test_write_png_windows_float_images(tmp_path: Path) -> None:
    a = np.linspace(-1, 1, H * W, dtype=np.float32).reshape(1, H, W)
    out = read_image_2d(write_png(a, tmp_path / "f.png", window=(0.0, 1.0)))
    assert float(out[0, 0, 0]) == 0.0
    assert float(out[0, -1, -1]) == 255.0
    assert float(out[0, H // 2, 0]) < 10.0, "values below the window clip to black"


def test_overlay_rejects_mismatched_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ"):
        write_overlay_png(np.zeros((H, W)), np.zeros((W, H)), None, tmp_path / "o.png")


def _truncated_png(tmp: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)).save(tmp / "full.png")
    raw = (tmp / "full.png").read_bytes()
    (tmp / "cut.png").write_bytes(raw[: len(raw) - 20])
    return tmp / "cut.png"


def _zero_bytes(tmp: Path) -> Path:
    (tmp / "empty.png").write_bytes(b"")
    return tmp / "empty.png"


def _cmyk(tmp: Path) -> Path:
    Image.new("CMYK", (W, H), (10, 20, 30, 40)).save(tmp / "print.tif")
    return tmp / "print.tif"


def _nifti_named_png(tmp: Path) -> Path:
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp / "vol.nii.gz")
    return (tmp / "vol.nii.gz").rename(tmp / "vol.png")


def _random_bytes(tmp: Path) -> Path:
    (tmp / "noise.jpg").write_bytes(np.random.default_rng(2).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return tmp / "noise.jpg"


def _multi_frame(tmp: Path) -> Path:
    frames = [Image.new("L", (W, H), v) for v in (0, 128)]
    frames[0].save(tmp / "stack.tif", save_all=True, append_images=frames[1:])
    return tmp / "stack.tif"


BAD_CASES = [
    (_truncated_png, "truncated or corrupt PNG"),
    (_zero_bytes, "0-byte"),
    (_cmyk, "unsupported image mode 'CMYK'"),
    (_nifti_named_png, "wrong magic bytes.*NIfTI"),
    (_random_bytes, "wrong magic bytes"),
    (_multi_frame, "2 frames"),
]


@pytest.mark.parametrize(("make", "problem"), BAD_CASES, ids=[m.__name__.strip("_") for m, _ in BAD_CASES])
def test_bad_images(tmp_path: Path, make, problem: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError, match=rf"{re.escape(path.name)}: .*{problem}"):
        read_image_2d(path)
