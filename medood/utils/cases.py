"""Case identifiers: the one rule that turns an input file into the name of its outputs and CSV rows."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["case_name"]

_EXT = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd|\.png|\.jpe?g|\.tiff?|\.bmp|\.dcm|\.npz|\.npy)$", re.IGNORECASE)


def case_name(path: str | os.PathLike[str]) -> str:
    """The case identifier of an input file: its base name without image extensions."""
    name = Path(os.fspath(path)).name
    return _EXT.sub("", name) or name
