"""The MONAI Label app's parts that need no MONAI Label: study and bundle lookup, and the output transform."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapTransform

from medood.detectors.calibration import overlay_window
from medood.handlers.writers import write_thresholds
from medood.inferers.ood_inferer import OODInferer
from medood.io import run_folder as rf
from medood.utils.errors import DataError
from medood.utils.io import atomic_path, case_name

__all__ = [
    "MAPS_DIR_KEY",
    "MAPS_FOLDER",
    "STUDY_KEY",
    "XFORM_KEY",
    "AnomalyOutputd",
    "HideStudyPathd",
    "anomaly_map_path",
    "bundle_makes_maps",
    "resolve_bundle",
    "resolve_study",
    "worst_slices",
    "write_nifti_like",
    "xform_codes",
]

logger = logging.getLogger(__name__)

#: Sub-folder of the studies folder that receives the float maps. MONAI Label lists every ``*.nii.gz`` at the
#: top of the studies folder as a study, so a map saved right next to its scan would become a new "study".
MAPS_FOLDER = "anomaly_maps"


#: Request key (set by the app, never by a client) of the folder that receives a case's float map.
MAPS_DIR_KEY = "medood_maps_dir"

#: Data key of the input's ``(qform_code, sform_code)``, kept by every NIfTI the app writes.
XFORM_KEY = "medood_xform_codes"

#: Number of worst slices per axis in the result JSON.
N_WORST = 5

#: Where :class:`HideStudyPathd` keeps MONAI Label's ``image_path`` during the transforms.
STUDY_KEY = "study_path"


class HideStudyPathd:
    """Move MONAI Label's ``image_path`` (a string) to :data:`STUDY_KEY` before the bundle's preprocessing.

    MONAI's ``Spacingd`` updates every ``image_*`` entry of the data as a metadata dict after resampling a NIfTI
    input; with MONAI Label's string ``image_path`` there, that fails (``'str' object has no attribute
    'update'``). :class:`AnomalyOutputd` puts it back for MONAI Label's writer.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with ``image_path`` moved to ``study_path``."""
        d = dict(data)
        if "image_path" in d:
            d[STUDY_KEY] = d.pop("image_path")
        return d


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def resolve_study(studies: str | os.PathLike[str], image_id: Any, lookup: Callable[[str], str | None]) -> Path:
    """The file of a datastore image id, refusing anything that is not a study inside the studies folder.

    Args:
        studies: the MONAI Label studies folder.
        image_id: the request's ``image``; must be a plain id (no path separator, not ``..``), not a path.
        lookup: the datastore's ``get_image_uri`` (id -> file, ``""`` / ``None`` when unknown).

    Raises:
        ValueError: the id is not a string, is a path, is unknown, or resolves outside ``studies``.
    """
    if not isinstance(image_id, str) or not image_id.strip():
        raise ValueError(f"image must be the id of a study in the datastore, got {type(image_id).__name__}")
    if image_id in (".", "..") or any(sep in image_id for sep in ("/", "\\", os.sep)) or "\x00" in image_id:
        raise ValueError(f"image {image_id!r} is a path, not a study id: only studies in the datastore are served")
    uri = lookup(image_id)
    if not uri:
        raise ValueError(f"image {image_id!r} is not a study of this datastore")
    path = Path(uri)
    if not _inside(path, Path(studies)) or not path.is_file():
        raise ValueError(f"image {image_id!r} resolves outside the studies folder: refused")
    return path.resolve()


def anomaly_map_path(
    studies: str | os.PathLike[str], image: str | os.PathLike[str], maps_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where the float map of a case goes: ``<maps_dir or studies/anomaly_maps>/<case>_anomaly_map.nii.gz``."""
    folder = Path(maps_dir) if maps_dir else Path(studies) / MAPS_FOLDER
    return folder / rf.map_file(case_name(image))


def xform_codes(image: str | os.PathLike[str]) -> tuple[int, int]:
    """The ``(qform_code, sform_code)`` of a NIfTI file; ``(1, 1)`` (scanner) for other files or unreadable ones."""
    try:
        header: Any = nib.load(str(image)).header
        return int(header["qform_code"]), int(header["sform_code"])
    except Exception:  # not NIfTI (NRRD, a folder): scanner coordinates, as MONAI writes them
        return 1, 1


def write_nifti_like(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str], codes: tuple[int, int], dtype: Any
) -> Path:
    """Atomically write ``array`` as NIfTI with ``affine`` and the input's qform / sform ``codes``."""
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=int(codes[0]) or 1)
    img.set_sform(img.affine, code=int(codes[1]) or int(codes[0]) or 1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)


def worst_slices(slices: Mapping[str, list[float]], k: int = N_WORST) -> list[dict[str, Any]]:
    """The ``k`` highest-scoring slices of every axis, worst first: ``[{"axis", "slice", "score"}]``."""
    out = []
    for axis, scores in slices.items():
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
        out += [{"axis": int(axis), "slice": int(i), "score": float(scores[i])} for i in order]
    return sorted(out, key=lambda r: -r["score"])


def _bundle_search_path() -> list[Path]:
    env = [Path(p) for p in os.environ.get("MEDOOD_BUNDLES", "").split(os.pathsep) if p]
    repo = Path(__file__).resolve().parents[2] / "bundles"  # a source checkout (editable install)
    return [*env, repo, Path.cwd() / "bundles"]


def resolve_bundle(name: str | os.PathLike[str]) -> Path:
    """A bundle folder from a path or a name under ``$MEDOOD_BUNDLES``, the checkout's ``bundles/`` or ``./bundles``.

    Raises:
        DataError: no such bundle (the message lists where it looked and what it found).
    """
    direct = Path(name)
    if (direct / "configs").is_dir():
        return direct.resolve()
    seen: list[str] = []
    for root in _bundle_search_path():
        if (root / str(name) / "configs").is_dir():
            return (root / str(name)).resolve()
        if root.is_dir():
            seen += sorted(p.name for p in root.iterdir() if (p / "configs").is_dir())
    raise DataError(
        direct, "is not a bundle folder or a known bundle name", hint=f"known bundles: {sorted(set(seen)) or 'none'}"
    )


def bundle_makes_maps(bundle: str | os.PathLike[str]) -> bool:
    """Whether a bundle's first output (the one MONAI Label reads) is a one-channel map of the input's shape."""
    path = Path(bundle) / "configs" / "metadata.json"
    try:
        fmt = json.loads(path.read_text(encoding="utf-8"))["network_data_format"]
        image, pred = next(iter(fmt["inputs"].values())), next(iter(fmt["outputs"].values()))
    except (OSError, ValueError, KeyError, StopIteration) as e:
        raise DataError(path, f"has no readable network_data_format ({e})") from None
    same_rank = len(pred.get("spatial_shape", [])) == len(image.get("spatial_shape", []))
    return pred.get("type") == "image" and int(pred.get("num_channels", 0)) == 1 and same_rank


class AnomalyOutputd(MapTransform):
    """The app's last post transform: save the float map, threshold it into the labelmap, scores into ``result``.

    Input: ``d[key]``, the map ``(1, *spatial)`` on the input's grid (after the bundle's ``Invertd``), with its
    ``affine``; ``d["study_path"]`` (:class:`HideStudyPathd`) or ``d["image_path"]``, the study;
    ``d[score_key]``, the volume score (from the network's grid);
    ``d[threshold_key]``, the request's threshold (``None`` / ``""`` = ``default_threshold``);
    ``d["anomaly_output"]``, ``"map"`` to return the float map as the result image (default: the mask);
    ``d[MAPS_DIR_KEY]``, the folder of the saved map (default ``<studies>/anomaly_maps``).
    Output: ``d[key]`` = uint8 mask (0 background, 1 anomaly), or the float32 map, with
    ``d[key + "_meta_dict"]["affine"]``; the float map written to :func:`anomaly_map_path` with the input's
    qform / sform codes and ``thresholds.json`` beside it; ``d[result_key]`` = the JSON MONAI Label returns.

    Args:
        keys: the map key. Defaults to ``"pred"``.
        studies: the studies folder.
        default_threshold: the detector's healthy-calibration map threshold (``None`` = the request must give one).
        threshold_source: how ``default_threshold`` was obtained, for the JSON. Defaults to a generic text.
        score_threshold: healthy image-score threshold (``flagged``), or ``None``.
        scorer: the bundle's :class:`~medood.inferers.OODInferer`, whose slice scores (axes, reduction) are the
            same as a bundle run's. Defaults to ``OODInferer()``.
        thresholds: the bundle's ``thresholds.json`` record
            (:func:`~medood.handlers.writers.thresholds_record`), written beside every saved map; its ``window``
            is the map's display window. ``None``: no file, window from ``default_threshold``.
    """

    def __init__(
        self,
        studies: str | os.PathLike[str],
        keys: str = "pred",
        default_threshold: float | None = None,
        threshold_source: str = "healthy calibration",
        score_threshold: float | None = None,
        scorer: OODInferer | None = None,
        score_key: str = "ood_score",
        threshold_key: str = "threshold",
        result_key: str = "result",
        thresholds: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(keys)
        self.studies = Path(studies)
        self.default_threshold, self.threshold_source = default_threshold, threshold_source
        self.score_threshold, self.scorer = score_threshold, scorer or OODInferer()
        self.score_key, self.threshold_key, self.result_key = score_key, threshold_key, result_key
        self.thresholds = dict(thresholds) if thresholds is not None else None

    def _threshold(self, d: Mapping[Hashable, Any]) -> tuple[float, str]:
        raw = d.get(self.threshold_key)  # MONAI Label fills it from the task's config when the request has none
        if raw is not None and str(raw).strip() != "":
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"threshold must be a number, got {raw!r}") from None
            if value != self.default_threshold:
                return value, "request"
        if self.default_threshold is None:
            raise ValueError("the detector has no healthy calibration: give a threshold with the request")
        return float(self.default_threshold), self.threshold_source

    def _window(self, threshold: float) -> list[float]:
        window = (self.thresholds or {}).get("window")
        return [float(w) for w in (window if window else overlay_window(float(self.default_threshold or threshold)))]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Save, threshold and score one case (see the class docstring)."""
        d = dict(data)
        key = self.first_key(d)
        amap = d[key]
        affine = np.asarray(getattr(amap, "affine", d.get(f"{key}_meta_dict", {}).get("affine")), dtype=np.float64)
        arr = torch.as_tensor(amap).detach().float().cpu().numpy()
        arr = np.nan_to_num(arr[0] if arr.ndim == 4 else arr, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
        threshold, source = self._threshold(d)
        image = d.pop(STUDY_KEY, None) or d.get("image_path")
        if not image:
            raise ValueError("the request has no study path (image_path)")
        d["image_path"] = image  # MONAI Label's writer takes the result's extension from it
        codes = d[XFORM_KEY] = xform_codes(str(image))
        path = write_nifti_like(
            arr, affine, anomaly_map_path(self.studies, str(image), d.get(MAPS_DIR_KEY)), codes, np.float32
        )
        thresholds_file = write_thresholds(path.parent, self.thresholds) if self.thresholds is not None else None
        slices = {
            str(ax): v[0].tolist() for ax, v in self.scorer.slice_scores(torch.from_numpy(arr)[None, None]).items()
        }
        raw_score = d.get(self.score_key)
        score = None if raw_score is None else float(torch.as_tensor(raw_score).float().reshape(-1)[0])
        mask = (arr >= threshold).astype(np.uint8)
        as_map = d.get("anomaly_output") == "map"
        d[key] = arr if as_map else mask
        if as_map:
            d["result_dtype"] = "float32"
        d[f"{key}_meta_dict"] = {"affine": affine}
        d[self.result_key] = {
            "volume_score": score,
            "flagged": None if score is None or self.score_threshold is None else bool(score > self.score_threshold),
            "score_threshold": self.score_threshold,
            "threshold": threshold,
            "threshold_source": source,
            "window": self._window(threshold),
            "worst_slices": worst_slices(slices),
            "slice_scores": slices,
            "anomalous_voxels": int(mask.sum()),
            "anomaly_output": "map" if as_map else "mask",
            "anomaly_map": str(path),
            "thresholds_file": None if thresholds_file is None else str(thresholds_file),
            "convention": "higher = more anomalous; labelmap 0 = background, 1 = anomaly; "
            "flagged = volume_score > score_threshold (healthy calibration)",
        }
        logger.info("%s: score %s, %d voxels >= %.4g", path.name, score, mask.sum(), threshold)
        return d
