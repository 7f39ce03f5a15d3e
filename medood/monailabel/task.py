"""``AnomalyBundleInferTask``: MONAI Label's bundle infer task for a medood anomaly-map bundle.

It reuses MONAI Label's :class:`~monailabel.tasks.infer.bundle.BundleInferTask` (bundle config, preprocessing,
network and weights, inferer, the bundle's ``postprocessing``) with four changes:

* the type is ``segmentation`` explicitly (MONAI Label otherwise guesses it from the folder name) and the labels
  are ``{"anomaly": 1}`` (the bundle's ``channel_def`` names the float map, not a label);
* weights load strictly (a silently half-loaded detector would have no calibration);
* the volume score is the detector's own ``map_score`` on the network's grid, through the inferer (as in bundle
  runs), and the slice scores the bundle inferer's (:class:`~medood.monailabel.studies.AnomalyOutputd`);
* the post transforms end with :class:`~medood.monailabel.studies.AnomalyOutputd` instead of MONAI Label's
  ``Restored`` (the bundle's ``Invertd`` already puts the map on the input's grid);
* the result image (mask, or float map with ``anomaly_output=map``) is written with the input's qform / sform
  codes (:meth:`AnomalyBundleInferTask.writer`).

The request option ``threshold`` (prefilled with the healthy-calibration threshold) sets the mask threshold; the
``flagged`` decision and the display window come from the bundle's stored healthy calibration
(:meth:`~medood.detectors.calibration.Calibration.thresholds`, as in bundle runs), written as ``thresholds.json``
beside every saved map.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, SaveImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from medood.handlers.writers import thresholds_record
from medood.inferers.ood_inferer import OODInferer
from medood.monailabel.studies import XFORM_KEY, AnomalyOutputd, HideStudyPathd, write_nifti_like

__all__ = ["AnomalyBundleInferTask"]

logger = logging.getLogger(__name__)


class AnomalyBundleInferTask(BundleInferTask):
    """Serve a map-producing medood bundle (see the module docstring).

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` values.
        studies: the studies folder (maps are saved under it).
        threshold: mask threshold overriding the healthy calibration's. Defaults to ``None``.
    """

    def __init__(self, path: str, conf: dict[str, str], studies: str, threshold: float | None = None) -> None:
        super().__init__(path, conf, type=InferType.SEGMENTATION, add_post_restore=False, load_strict=True)
        if not self.is_valid():
            raise ValueError(f"{path}: MONAI Label cannot load this bundle (no inference config or weights)")
        self.studies = studies
        self.labels = {"anomaly": 1}
        self.map_percentile = float(self.bundle_config.get("map_percentile", 99.5))
        self.score_percentile = float(self.bundle_config.get("score_percentile", 95.0))
        self.slice_axes = list(self.bundle_config.get("slice_axes", [-1]))
        self.default_threshold, self.score_threshold, self.threshold_source = self._calibration(threshold)
        self._config["threshold"] = self.default_threshold if self.default_threshold is not None else ""
        self._config["model_filename"] = ["model.pt"]  # the bundle's other weights belong to other detectors
        meta = json.loads((Path(path) / "configs" / "metadata.json").read_text())
        pred: dict[str, Any] = next(iter(meta.get("network_data_format", {}).get("outputs", {}).values()), {})
        #: the map's declared value range (``[]``: unbounded, non-negative); request thresholds must lie in it
        self.map_value_range = [float(v) for v in pred.get("value_range", [])]
        self.description = f"{meta.get('name', Path(path).name)}: anomaly mask (map >= threshold), scores in JSON"

    def _calibration(self, threshold: float | None) -> tuple[float | None, float | None, str]:
        net = self._get_network("cpu", None)
        cal = getattr(net, "calibration", None)
        found = cal.thresholds(self.map_percentile, self.score_percentile) if cal is not None else None
        score_t = found.score if found is not None else None
        #: the ``thresholds.json`` record written beside every saved map (the bundle runs' format)
        self.thresholds = thresholds_record(cal, self.map_percentile, self.score_percentile, map_threshold=threshold)
        if threshold is not None:
            return float(threshold), score_t, "server option --threshold"
        if found is None or found.map is None:
            logger.warning("%s: no healthy map calibration; every request must give a threshold", self.bundle_path)
            return None, score_t, "request"
        return found.map, score_t, f"healthy calibration p{self.map_percentile:g} of map values"

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        """MONAI Label's inference, plus the volume score reduced on the network's grid."""
        image = data[self.input_key]
        data = super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
        amap = data[self.output_label_key]
        with torch.no_grad():
            x = torch.as_tensor(image)[None].to(amap.device)
            score = OODInferer.volume_score(torch.as_tensor(amap)[None], x, self._get_network(device, data))
        data["ood_score"] = float(score.reshape(-1)[0])
        return data

    def _scorer(self) -> OODInferer:
        inferer = self.bundle_config.get_parsed_content("inferer", instantiate=True)
        return inferer if isinstance(inferer, OODInferer) else OODInferer(slice_axes=self.slice_axes)

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        """:class:`HideStudyPathd`, then the bundle's preprocessing."""
        return [HideStudyPathd(), *super().pre_transforms(data)]

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        """The bundle's postprocessing (``Invertd``; ``SaveImaged`` dropped), then :class:`AnomalyOutputd`.

        MONAI Label's own version iterates the postprocessing, so it fails on a single transform (our bundles'
        bare ``Invertd``); this one accepts a transform, a list or a ``Compose``.
        """
        self._update_device(data)
        post: Any = []
        for key in self.const.key_postprocessing():
            if self.bundle_config.get(key):
                post = self.bundle_config.get_parsed_content(key, instantiate=True)
                break
        post = list(post.transforms) if isinstance(post, Compose) else list(post) if isinstance(post, list) else [post]
        post = [t for t in post if not isinstance(t, SaveImaged)]
        post.append(
            AnomalyOutputd(
                self.studies,
                keys=self.key_pred,
                default_threshold=self.default_threshold,
                threshold_source=self.threshold_source,
                score_threshold=self.score_threshold,
                scorer=self._scorer(),
                thresholds=self.thresholds,
            )
        )
        return post

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
        """Write the result image (mask or float map) as NIfTI with the input's qform / sform codes.

        Returns:
            the file (MONAI Label sends it and removes it) and the result JSON.
        """
        ext = extension or data.get("result_extension") or ".nii.gz"
        dtype = dtype or data.get("result_dtype") or "uint8"
        key = self.key_pred
        out = tempfile.NamedTemporaryFile(suffix=ext, delete=False).name
        affine = np.asarray(data[f"{key}_meta_dict"]["affine"], dtype=np.float64)
        write_nifti_like(np.asarray(data[key]), affine, out, data.get(XFORM_KEY, (1, 1)), np.dtype(dtype))
        return out, data.get("result", {})
