"""``MedoodLabelApp``: the MONAI Label app ``medood label serve`` runs (one bundle, local studies, no training).

``--conf bundle <folder>`` names the bundle; ``--conf threshold <t>`` optionally fixes the mask threshold.
Requests may only name studies of the datastore: an ``image`` that is a path, or resolves outside the studies
folder, is refused (MONAI Label itself would read any existing file the request names).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp

from medood.monailabel.studies import resolve_bundle, resolve_study
from medood.monailabel.task import AnomalyBundleInferTask

__all__ = ["MedoodLabelApp"]

logger = logging.getLogger(__name__)


class MedoodLabelApp(MONAILabelApp):
    """Serve one medood anomaly-map bundle to MONAI Label clients (3D Slicer, OHIF)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle = resolve_bundle(conf.get("bundle", ""))
        threshold = conf.get("threshold")
        self.fixed_threshold = float(threshold) if threshold not in (None, "") else None
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="medood",
            description=f"medood anomaly maps: {self.bundle.name}",
            version="1",
            labels={"anomaly": 1},
        )

    def init_infers(self) -> dict[str, Any]:
        """One infer task, named after the bundle folder."""
        task = AnomalyBundleInferTask(str(self.bundle), self.conf, self.studies, threshold=self.fixed_threshold)
        return {self.bundle.name: task}

    def init_trainers(self) -> dict[str, Any]:
        """No training through MONAI Label (train with the bundle's configs)."""
        return {}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> Any:
        """Refuse (HTTP 400) images that are not studies of the datastore, then run MONAI Label's inference."""
        store = datastore if datastore is not None else self.datastore()
        try:
            path = resolve_study(self.studies, request.get("image"), store.get_image_uri)
        except ValueError as e:
            logger.warning("refused inference request: %s", e)
            raise HTTPException(status_code=400, detail=str(e)) from None
        return super().infer({**request, "image": str(Path(path))}, datastore)
