"""Data layer: readers for NIfTI, DICOM, 2D images and dataset layouts, and the embedded demo data."""

from __future__ import annotations

from medood.data.errors import DataError

__all__ = ["DataError"]
