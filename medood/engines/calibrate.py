"""Calibration on in-distribution data: of a detector outside a bundle, and of a bundle at a new site.

:func:`calibrate_detector` records a fitted detector's healthy values; :func:`calibrate_bundle` (``medood
calibrate``) re-records a bundle's thresholds from a site's own scans without retraining.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

from medood.data.image2d import IMAGE_2D_SUFFIXES
from medood.detectors.base import OODDetector
from medood.detectors.calibration import Calibration
from medood.engines.evaluator import OODEvaluator
from medood.handlers.detector_fit import CalibrationHandler
from medood.handlers.writers import THRESHOLDS_FILE, thresholds_record, write_thresholds
from medood.inferers.ood_inferer import OODInferer
from medood.metrics.files import read_scores
from medood.utils.checkpoints import save_state
from medood.utils.conformal import CalibrationSizeError, conformal_threshold, min_calibration_size
from medood.utils.io import atomic_write_text

__all__ = ["SITE_FILES", "calibrate_bundle", "calibrate_detector", "count_scans", "run_bundle_inference"]

logger = logging.getLogger(__name__)


def calibrate_detector(
    detector: OODDetector,
    loader: Iterable[Any],
    inferer: OODInferer | None = None,
    foreground: str | Callable[[dict], Tensor] = "nonzero",
    device: str | torch.device | None = None,
) -> Calibration:
    """Record healthy score and map-value quantiles into ``detector.calibration``.

    Runs the same evaluator pass and :class:`~medood.handlers.CalibrationHandler` a bundle's calibration stage
    runs, so thresholds are sampled identically in both places.

    Args:
        detector: a fitted detector.
        loader: healthy validation batches (``{"image": ...}`` dicts; data the detector was not fitted on).
        inferer: the inferer (default: whole-input :class:`~medood.inferers.OODInferer`).
        foreground: which map values count (see :class:`~medood.handlers.CalibrationHandler`). Defaults to
            ``"nonzero"``.
        device: where to run (default: the detector's device).

    Returns:
        ``detector.calibration``.
    """
    detector.check_fitted()
    evaluator = OODEvaluator(
        device=torch.device(device) if device is not None else detector.device,
        val_data_loader=loader,  # type: ignore[arg-type]
        network=detector,
        inferer=inferer or OODInferer(),
        val_handlers=[CalibrationHandler(detector, foreground=foreground)],
        decollate=True,
    )
    evaluator.run()
    return detector.calibration


# ---------------------------------------------------------------------------------------------- site recalibration
#: What ``calibrate_bundle`` writes into its output folder (never into the bundle's shipped files).
SITE_FILES = (THRESHOLDS_FILE, "calibration.pt", "id_scores.csv")
_SCAN_SUFFIXES = (".nii", ".nii.gz", ".dcm", *IMAGE_2D_SUFFIXES)
#: map values sampled per ID case for the voxel threshold (seeded)
_MAP_SAMPLE = 20000


def count_scans(folder: str | os.PathLike[str]) -> int:
    """Image files (NIfTI, DICOM, 2D images) under ``folder``, searched recursively."""
    return sum(1 for p in Path(folder).rglob("*") if p.is_file() and p.name.lower().endswith(_SCAN_SUFFIXES))


def _sample_map_values(run_dir: Path, gen: np.random.Generator) -> torch.Tensor | None:
    """Non-zero finite values of every ``*_map.nii.gz`` of a run (at most :data:`_MAP_SAMPLE` per case)."""
    chunks = []
    for path in sorted(run_dir.glob("*_map.nii.gz")):
        v = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float64).reshape(-1)  # type: ignore[attr-defined]
        v = v[np.isfinite(v) & (v != 0)]
        if v.size > _MAP_SAMPLE:
            v = gen.choice(v, _MAP_SAMPLE, replace=False)
        chunks.append(v)
    return torch.from_numpy(np.concatenate(chunks)) if chunks and sum(c.size for c in chunks) else None


def run_bundle_inference(
    bundle: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    config: str | Sequence[str] = "inference.yaml",
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Run a bundle's inference workflow (shipped weights) on ``dataset_dir`` into ``output_dir``; returns it.

    ``config`` is one file of ``configs/`` or several in merge order.
    """
    from monai.bundle import ConfigWorkflow

    bundle = Path(bundle)
    files = [config] if isinstance(config, str) else list(config)
    wf = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in files], meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type="infer", bundle_root=str(bundle), dataset_dir=str(dataset_dir), output_dir=str(output_dir),
        **(overrides or {}),
    )  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    return Path(output_dir)


def calibrate_bundle(
    bundle: str | os.PathLike[str],
    id_dir: str | os.PathLike[str],
    alpha: float = 0.05,
    out: str | os.PathLike[str] | None = None,
    map_alpha: float = 0.005,
    config: str = "inference.yaml",
    overrides: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Re-record a bundle's thresholds from a site's own in-distribution scans, without retraining.

    Runs the bundle's inference workflow (its shipped weights, unchanged) on ``id_dir`` into a temporary folder,
    and from each ``scores.csv`` it writes (one per detector) sets the flag threshold by the split-conformal rule
    (:func:`~medood.utils.conformal.conformal_threshold`, false-alarm rate ``alpha`` per image) and, where the run
    wrote anomaly maps, the map threshold at ``map_alpha`` (per-voxel marginal rate). Writes, per detector, into
    ``out`` (default ``<bundle>/models/site_calibration``): ``thresholds.json`` (the bundle's record, with
    ``score_rule`` naming the rule, ``alpha`` and ``n``), ``calibration.pt`` (a
    :class:`~medood.detectors.calibration.Calibration` state dict) and ``id_scores.csv``. Existing files are never
    replaced, so the shipped thresholds stay as they are.

    Args:
        bundle: the bundle folder (``configs/``, ``models/``).
        id_dir: a folder of the site's in-distribution scans (any layout the bundle's inference reads).
        alpha: requested per-image false-alarm rate. Defaults to 0.05.
        out: the output folder. Defaults to ``<bundle>/models/site_calibration``.
        map_alpha: per-voxel false-alarm rate of the mask threshold. Defaults to 0.005.
        config: the bundle's inference config in ``configs/``. Defaults to ``inference.yaml``.
        overrides: extra config overrides (e.g. a device).

    Returns:
        ``{detector folder ("." for the bundle's own): thresholds record}``.

    Raises:
        CalibrationSizeError: ``id_dir`` holds (or the run scored) fewer scans than ``alpha`` needs; checked
            before anything runs, from the number of image files.
        FileNotFoundError: no such bundle / config / folder.
        FileExistsError: ``out`` already holds site thresholds.
    """
    bundle, id_dir = Path(bundle), Path(id_dir)
    cfg = bundle / "configs" / config
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg}: no such bundle config")
    if not id_dir.is_dir():
        raise FileNotFoundError(f"{id_dir}: no such folder of in-distribution scans")
    n_files = count_scans(id_dir)
    needed = min_calibration_size(alpha)
    if n_files < needed:
        raise CalibrationSizeError(n_files, alpha, f"in-distribution scans in {id_dir}")
    out = Path(out) if out is not None else bundle / "models" / "site_calibration"
    taken = [str(p) for p in out.rglob(THRESHOLDS_FILE)] if out.exists() else []
    if taken:
        raise FileExistsError(f"{taken[0]} exists: site thresholds are never overwritten; choose another --out")
    logger.info("calibrate: %d scans in %s (alpha %g needs at least %d)", n_files, id_dir, alpha, needed)
    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="medood_calibrate_") as tmp:
        run_dir = Path(tmp)
        run_bundle_inference(bundle, id_dir, run_dir, config, overrides)
        found = sorted(run_dir.rglob("scores.csv"))
        if not found:
            raise FileNotFoundError(f"{bundle.name}: its inference wrote no scores.csv; cannot calibrate it")
        gen = np.random.default_rng(0)
        staged = []
        for scores_csv in found:
            scores = read_scores(scores_csv)[0]
            values = np.array(list(scores.values()), dtype=np.float64)
            conformal_threshold(values, alpha)  # refuses when the run scored too few cases (bad files skipped)
            cal = Calibration()
            cal.update(torch.from_numpy(values), _sample_map_values(scores_csv.parent, gen))
            record = thresholds_record(cal, 100.0 * (1.0 - map_alpha), 100.0 * (1.0 - alpha))
            record.update(bundle=bundle.name, id_dir=str(id_dir.resolve()), n_files=n_files)
            rel = scores_csv.parent.relative_to(run_dir)
            staged.append((rel, cal, record, scores))
        for rel, cal, record, scores in staged:
            dest = out / rel
            dest.mkdir(parents=True, exist_ok=True)
            write_thresholds(dest, record)
            save_state(cal, dest / "calibration.pt")
            rows = "".join(f"{case},{score:.7g}\n" for case, score in scores.items())
            atomic_write_text(dest / "id_scores.csv", "case,score\n" + rows)
            records[str(rel)] = record
            rule = record["score_rule"]
            logger.info(
                "calibrate: %s: flag threshold %.5g (alpha %g, n %d, expected false-alarm rate %.3g) -> %s",
                rel, record["score_threshold"], alpha, rule["n"], rule["expected_rate"], dest,
            )  # fmt: skip
    return records
