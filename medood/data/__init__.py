"""Data layer: readers for NIfTI, DICOM, 2D images and dataset layouts, and the embedded demo data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medood.data.errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CaseFailure",
    "DataError",
    "Image2DReader",
    "LoadDicomSeriesd",
    "LoadImage2D",
    "LoadImage2Dd",
    "LoadVolume",
    "LoadVolumed",
    "MedMNISTDataset",
    "SafeCacheDataset",
    "SafeDataset",
    "SkippingDataLoader",
    "ValidateImage",
    "ValidateImaged",
    "bids_datalist",
    "bundle_datalist",
    "check_dataset",
    "check_volume",
    "class_balanced_loader",
    "class_balanced_sampler",
    "class_folder_datalist",
    "class_folder_loader",
    "classifier_preprocessing",
    "decathlon_datalist",
    "evaluation_datalist",
    "find_dicom_series",
    "ham10000_datalist",
    "image_datalist",
    "isic2019_datalist",
    "load_dicom_series",
    "load_volume",
    "nifti_datalist",
    "ood_datalists",
    "read_image_2d",
    "read_map_nifti_2d",
    "save_split_4d",
    "scoring_datalist",
    "split_4d",
    "write_map_nifti_2d",
    "write_overlay_png",
    "write_png",
]

# Readers are exported lazily (PEP 562): importing them pulls in monai.data, SimpleITK and pydicom, and
# ``from medood.data.errors import DataError`` must stay cheap.
_LAZY = {
    "load_volume": "readers", "split_4d": "readers", "save_split_4d": "readers", "check_volume": "readers",
    "find_dicom_series": "dicom", "load_dicom_series": "dicom",
    "read_image_2d": "image2d", "write_png": "image2d", "write_overlay_png": "image2d",
    "write_map_nifti_2d": "image2d", "read_map_nifti_2d": "image2d", "Image2DReader": "image2d",
    "MedMNISTDataset": "medmnist",
    "class_folder_datalist": "folders", "isic2019_datalist": "folders", "ham10000_datalist": "folders",
    "image_datalist": "folders", "ood_datalists": "folders", "scoring_datalist": "folders",
    "evaluation_datalist": "folders",
    "IMAGENET_MEAN": "classification", "IMAGENET_STD": "classification", "classifier_preprocessing": "classification",
    "class_folder_loader": "classification", "class_balanced_sampler": "classification",
    "class_balanced_loader": "classification",
    "bids_datalist": "datalist", "bundle_datalist": "datalist", "decathlon_datalist": "datalist",
    "nifti_datalist": "datalist",
    "LoadVolume": "transforms", "LoadVolumed": "transforms", "LoadImage2D": "transforms",
    "LoadImage2Dd": "transforms", "LoadDicomSeriesd": "transforms", "ValidateImage": "transforms",
    "ValidateImaged": "transforms",
    "CaseFailure": "skipping", "SafeCacheDataset": "skipping", "SafeDataset": "skipping",
    "SkippingDataLoader": "skipping",
    "check_dataset": "check",
}  # fmt: skip

if TYPE_CHECKING:
    from medood.data.check import check_dataset
    from medood.data.classification import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        class_balanced_loader,
        class_balanced_sampler,
        class_folder_loader,
        classifier_preprocessing,
    )
    from medood.data.datalist import bids_datalist, bundle_datalist, decathlon_datalist, nifti_datalist
    from medood.data.dicom import find_dicom_series, load_dicom_series
    from medood.data.folders import (
        class_folder_datalist,
        evaluation_datalist,
        ham10000_datalist,
        image_datalist,
        isic2019_datalist,
        ood_datalists,
        scoring_datalist,
    )
    from medood.data.image2d import (
        Image2DReader,
        read_image_2d,
        read_map_nifti_2d,
        write_map_nifti_2d,
        write_overlay_png,
        write_png,
    )
    from medood.data.medmnist import MedMNISTDataset
    from medood.data.readers import check_volume, load_volume, save_split_4d, split_4d
    from medood.data.skipping import CaseFailure, SafeCacheDataset, SafeDataset, SkippingDataLoader
    from medood.data.transforms import (
        LoadDicomSeriesd,
        LoadImage2D,
        LoadImage2Dd,
        LoadVolume,
        LoadVolumed,
        ValidateImage,
        ValidateImaged,
    )


def __getattr__(name: str) -> Any:
    """Import the reader modules on first use of one of their names."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"medood.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'medood.data' has no attribute {name!r}")
