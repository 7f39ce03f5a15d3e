"""medood as a MONAI Label app: anomaly maps in 3D Slicer through MONAI Label (optional extra ``monailabel``).

``medood label serve --studies DIR --bundle NAME`` serves one map-producing bundle. MONAI Label returns every
result image to Slicer as a labelmap, so a float map would be quantised (MONAI Label issue #1657); the app
therefore returns the THRESHOLDED mask as the labelmap (background 0, anomaly 1; the threshold is an option of
the request, default = the detector's healthy-calibration threshold), puts the volume and slice scores in the
result JSON, and saves the float map as ``<studies>/anomaly_maps/<case>_anomaly_map.nii.gz`` for Slicer.

The server is locked down by default (:mod:`~medood.monailabel.policy`, applied by
:mod:`~medood.monailabel.http`): inference and reading only, no uploads without ``--allow-upload``, never deletes
or training, no cross-origin access unless ``--cors-origin``, an optional shared token; Slicer's session volumes
live in a temporary store outside the studies folder. :data:`~medood.monailabel.slicer_snippet.SLICER_SNIPPET`
shows a served float map and its scores in Slicer.

Modules that import ``monailabel`` (:mod:`~medood.monailabel.task`, :mod:`~medood.monailabel.app`,
:mod:`~medood.monailabel.http`, and :mod:`~medood.monailabel.server` when it runs) are imported only by the
server; the rest needs no MONAI Label.
Layer: an application, beside ``cli``.
"""

from __future__ import annotations

from medood.monailabel.studies import (
    MAPS_FOLDER,
    AnomalyOutputd,
    HideStudyPathd,
    anomaly_map_path,
    bundle_makes_maps,
    resolve_bundle,
    resolve_study,
)

__all__ = [
    "MAPS_FOLDER",
    "AnomalyOutputd",
    "HideStudyPathd",
    "anomaly_map_path",
    "bundle_makes_maps",
    "resolve_bundle",
    "resolve_study",
]
