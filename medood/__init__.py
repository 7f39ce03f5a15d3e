"""medood: out-of-distribution and anomaly detection for clinical imaging, built on MONAI.

Score convention (one for the whole package): **higher = more OOD / more anomalous**, and OOD is the positive
class (label 1) in every metric. Anomaly maps are float32 tensors of shape ``(B, 1, *spatial)``.

The package root holds no wiring: importing it imports nothing else of medood. Detectors declare their training
stages as data and ``detector.fit(loader, trainer=medood.engines.fit_detector)`` takes the training step from its
caller, so no detector imports the engines.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
