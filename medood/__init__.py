"""medood: out-of-distribution and anomaly detection for clinical imaging, built on MONAI.

Score convention (one for the whole package): **higher = more OOD / more anomalous**, and OOD is the positive
class (label 1) in every metric. Anomaly maps are float32 tensors of shape ``(B, 1, *spatial)``.

The package root wires the layers together: detectors declare their training stages as data and hand them to
the training backend registered here (:func:`medood.engines.fit.fit_detector`, imported on first use), so no
detector imports the engines.
"""

from __future__ import annotations

from typing import Any

from medood.utils.plugins import set_training_backend

__version__ = "0.1.0"

__all__ = ["__version__"]


def _fit_detector(detector: Any, loader: Any, **options: Any) -> Any:
    from medood.engines.fit import fit_detector

    return fit_detector(detector, loader, **options)


set_training_backend(_fit_detector)
