"""Stand-in for the model zoo bundle's ``scripts`` package, written for medood's tests (not the zoo's code).

The published ``inference.json`` runs ``$import scripts`` and registers ``scripts.ClassificationWriter`` for the
``.json`` extension of ``SaveImaged``; this writer stores the class probabilities of one case as a JSON list.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from monai.data import ImageWriter


class ClassificationWriter(ImageWriter):
    """``SaveImaged`` backend writing ``[{"class": i, "probability": p}, ...]`` for one case."""

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0, **kwargs: Any) -> None:
        self.data_obj = np.asarray(self.convert_to_channel_last(data_array, channel_dim=None)).reshape(-1)

    def set_metadata(self, meta_dict: Any = None, resample: bool = True, **options: Any) -> None:
        """Nothing to record: a class vector has no geometry."""

    def write(self, filename: Any, verbose: bool = False, **kwargs: Any) -> None:
        super().write(filename, verbose=verbose)
        rows = [{"class": i, "probability": float(p)} for i, p in enumerate(self.data_obj)]
        with open(filename, "w") as f:
            json.dump(rows, f)
