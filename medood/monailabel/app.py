"""``MedoodLabelApp``: the MONAI Label app ``medood label serve`` runs (one bundle, local studies, no training).

``--conf bundle <folder>`` names the bundle; ``--conf threshold <t>`` optionally fixes the mask threshold.
Requests may only name studies of the datastore, or a session volume (Slicer's ``PUT /session/``): an ``image``
that is a path, or resolves outside the studies folder, is refused (MONAI Label itself would read any existing
file the request names). Inference never saves a label into the datastore. The float map of a study goes to
``<studies>/anomaly_maps/``, that of a session volume into the session's own folder (it expires with it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp

from medood.monailabel.policy import RequestRefused, confined
from medood.monailabel.studies import MAPS_DIR_KEY, MAPS_FOLDER, resolve_bundle, resolve_study
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

    def infer_task(self, model: str) -> Any:
        """The infer task serving ``model``, or ``None``."""
        return self._infers.get(model)

    def models(self) -> list[str]:
        """The names of the served models."""
        return sorted(self._infers)

    def infer(self, request: dict[str, Any], datastore: Any = None) -> Any:
        """Refuse (HTTP 400) images that are neither studies nor session volumes, then run MONAI Label's inference.

        The float map goes beside the study (``anomaly_maps/``) or into the session folder; no label is saved.
        """
        store = datastore if datastore is not None else self.datastore()
        session = request.get("session")
        try:
            if isinstance(session, dict) and self.sessions() is not None:
                path = confined(str(request.get("image", "")), self.sessions().store_path)
                maps_dir = Path(str(session.get("path", path.parent))) / MAPS_FOLDER
                confined(maps_dir, self.sessions().store_path)
            else:
                path = resolve_study(self.studies, request.get("image"), store.get_image_uri)
                maps_dir = Path(self.studies) / MAPS_FOLDER
        except (ValueError, RequestRefused) as e:
            reason = e.reason if isinstance(e, RequestRefused) else str(e)
            logger.warning("refused inference request: %s", reason)
            raise HTTPException(status_code=400, detail=reason) from None
        checked = {**request, "image": str(Path(path)), "save_label": False, MAPS_DIR_KEY: str(maps_dir)}
        return super().infer(checked, datastore)
