"""MONAI transforms of the data layer: validated loaders and validators inside Compose pipelines."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import Compose, LoadImaged
from PIL import Image

from medood.data import DataError
from medood.data.transforms import LoadImage2Dd, LoadVolumed, ValidateImage, ValidateImaged


def _nii(path: Path, shape: tuple[int, ...]) -> Path:
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4)), path)
    return path


def test_load_volumed_in_a_monai_dataset(tmp_path: Path) -> None:
    path = _nii(tmp_path / "a.nii.gz", (16, 16, 16))
    ds = Dataset([{"image": str(path), "label": 1}], transform=LoadVolumed("image"))
    item = ds[0]
    assert isinstance(item["image"], MetaTensor)
    assert tuple(item["image"].shape) == (1, 16, 16, 16)
    assert item["label"] == 1


def test_load_volumed_error_is_the_cause_of_monais_runtime_error(tmp_path: Path) -> None:
    path = _nii(tmp_path / "brats.nii.gz", (16, 16, 16, 4))
    pipeline = Compose([LoadVolumed("image")])
    with pytest.raises(RuntimeError) as info:
        pipeline({"image": str(path)})
    assert isinstance(info.value.__cause__, DataError)
    assert "brats.nii.gz: is 4D with 4 volumes" in str(info.value.__cause__)


def test_validate_catches_4d_file_loaded_as_channels_by_loadimaged(tmp_path: Path) -> None:
    path = _nii(tmp_path / "multi.nii.gz", (16, 16, 16, 4))
    loaded = LoadImaged("image", ensure_channel_first=True)({"image": str(path)})
    assert tuple(loaded["image"].shape) == (4, 16, 16, 16)
    with pytest.raises(DataError, match=r"multi\.nii\.gz: has 4 channels, expected 1.*split_4d"):
        ValidateImaged("image", spatial_dims=3, channels=1)(loaded)


def test_validate_image_checks() -> None:
    img = MetaTensor(torch.rand(1, 8, 8, 8), meta={"filename_or_obj": "/data/x.nii.gz"})
    assert ValidateImage(spatial_dims=3, channels=1)(img) is img
    img[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match=r"x\.nii\.gz: contains 1 NaN and 0 Inf"):
        ValidateImage()(img)
    flat = MetaTensor(torch.rand(1, 8, 8, 1), meta={"filename_or_obj": "/data/flat.nii.gz"})
    with pytest.raises(DataError, match=r"flat\.nii\.gz: has spatial shape \(8, 8, 1\).*expected a 3D"):
        ValidateImage(spatial_dims=3)(flat)
    assert ValidateImage(spatial_dims=2)(flat) is flat
    with pytest.raises(DataError, match=r"<in-memory image>: is all zero"):
        ValidateImage()(torch.zeros(1, 4, 4))


def test_load_image_2dd_keeps_rows_and_columns(tmp_path: Path) -> None:
    a = np.zeros((10, 25), np.uint8)
    a[1, 20] = 200
    Image.fromarray(a).save(tmp_path / "x.png")
    out = LoadImage2Dd("image", scale=True)({"image": str(tmp_path / "x.png")})
    assert tuple(out["image"].shape) == (1, 10, 25)
    assert float(out["image"][0, 1, 20]) == pytest.approx(200 / 255)
