"""Write what a detector found: anomaly-map NIfTI files, thresholded masks, scores and slice scores.

:class:`OODResultWriter` is an Ignite handler for MONAI evaluators (bundle ``val_handlers``). Per case it writes

* ``<case>_anomaly_map.nii.gz``: float32, exactly the input's shape and affine (the map must already be on the
  input grid, i.e. after MONAI ``Invertd``); 2D images get a single-slice NIfTI that overlays the PNG in 3D
  Slicer plus ``<case>_anomaly_overlay.png``;
* ``<case>_anomaly_seg.nii.gz``: uint8 mask ``map >= threshold`` when a threshold is known: given, or read from
  the detector's calibration on healthy validation data (``map_percentile``), never chosen on the test data;

and at the end of the run ``scores.csv`` (``case,score,flagged[,label][,image]``; ``label`` is the ground truth when
the data carries it, ``flagged`` = score above the healthy ``score_percentile``), ``slice_scores.csv`` (long format
``case,axis,slice,score``; ``axis`` is the file's voxel axis) and ``run.json``. It reads each case's
:class:`~medood.io.OODResult` (``ood_result``, made by :class:`~medood.engines.OODEvaluator`); every name and layout
is :mod:`medood.io.run_folder`'s, and every file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from torch import Tensor

from medood.data.image2d import read_image_2d, write_map_nifti_2d, write_overlay_png
from medood.data.shard import datalist_cases, unique_case
from medood.detectors.calibration import Calibration, overlay_window
from medood.handlers.resume import ResumableRun, outputs_valid
from medood.inferers.ood_inferer import OODInferer
from medood.io import run_folder as rf
from medood.io.result import OODResult
from medood.io.run_folder import THRESHOLDS_FILE, RunFolder, write_thresholds
from medood.utils.distributed import get_rank
from medood.utils.enums import OODKeys
from medood.utils.io import atomic_path, case_name

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "THRESHOLDS_FILE",
    "OODResultWriter",
    "case_name",
    "thresholds_record",
    "write_map_nifti",
    "write_scores_csv",
    "write_slice_scores_csv",
    "write_thresholds",
]

#: the output key of each case's result (:data:`medood.engines.evaluator.RESULT_KEY`; engines sit above handlers)
RESULT_KEY = "ood_result"

logger = logging.getLogger(__name__)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def write_map_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    dtype: Any = np.float32,
    codes: tuple[int, int] = (1, 1),
) -> Path:
    """Atomically write a 3D array as NIfTI with ``affine``; ``codes`` are the (qform, sform) codes (the input's)."""
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=int(codes[0]) or 1)
    img.set_sform(img.affine, code=int(codes[1]) or 1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)


def write_scores_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Atomically write ``scores.csv`` (:func:`medood.io.run_folder.write_score_rows`)."""
    return rf.write_score_rows(path, rows)


def write_slice_scores_csv(path: str | os.PathLike[str], rows: Sequence[tuple[str, int, int, float]]) -> Path:
    """Atomically write ``slice_scores.csv`` (:func:`medood.io.run_folder.write_slice_scores`)."""
    return rf.write_slice_scores(path, rows)


def thresholds_record(
    calibration: Calibration | None,
    map_percentile: float = 99.5,
    score_percentile: float = 95.0,
    map_threshold: float | None = None,
    score_threshold: float | None = None,
    window: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The content of ``thresholds.json`` (the one place its format is defined; ``medood.reports`` reads it).

    ``{"map_threshold", "score_threshold", "window", "map_percentile", "score_percentile", "id_scores"}``: the
    thresholds of :meth:`~medood.detectors.calibration.Calibration.thresholds` unless given explicitly, the colour
    window (:func:`~medood.detectors.calibration.overlay_window` of the map threshold unless given), and
    ``id_scores``, the healthy image-score quantiles at every 1 % (the ID reference of the run reports).
    Uncalibrated parts are ``None``. ``score_rule`` / ``map_rule`` name the rule of each calibrated threshold
    (split-conformal), its ``alpha`` (``1 - percentile / 100``) and ``n`` (or why it was ``refused``); the map
    rate is per-voxel marginal.
    """
    found = calibration.thresholds(map_percentile, score_percentile) if calibration is not None else None
    map_t = map_threshold if map_threshold is not None else (found.map if found else None)
    score_t = score_threshold if score_threshold is not None else (found.score if found else None)
    if window is None and map_t is not None:
        window = overlay_window(map_t)
    has_scores = calibration is not None and calibration.has_scores
    return {
        "map_threshold": None if map_t is None else float(map_t),
        "score_threshold": None if score_t is None else float(score_t),
        "window": None if window is None else [float(window[0]), float(window[1])],
        "map_percentile": map_percentile,
        "score_percentile": score_percentile,
        "score_rule": found.score_rule if found and score_threshold is None else None,
        "map_rule": found.map_rule if found and map_threshold is None else None,
        "id_scores": [calibration.quantile(q / 100.0, "score") for q in range(101)]
        if calibration and has_scores
        else None,
        "n_calibration": _n_calibration(calibration) if has_scores else None,
    }


def _n_calibration(calibration: Calibration | None) -> int | None:
    """The number of healthy calibration images (not the length of the stored quantile list)."""
    return None if calibration is None else int(calibration.n_scores)


class OODResultWriter:
    """Ignite handler writing maps, masks, ``scores.csv`` and ``slice_scores.csv`` for an OOD evaluator.

    Args:
        output_dir: where everything goes (created).
        map_key: engine-output key of the anomaly map, already on the input grid. Defaults to ``"pred"``.
        score_key: key of the image / volume score. Defaults to ``"ood_score"``.
        label_key: optional key of a case-level label (1 = OOD / anomalous) copied to ``scores.csv``.
        threshold: map threshold for ``*_anomaly_seg.nii.gz``. ``None``: read it from ``calibration`` (if given
            and calibrated), else no masks. Take it from healthy data.
        score_threshold: image-score threshold for the ``flagged`` column; ``None``: from ``calibration`` (if
            calibrated), else no column.
        calibration: the detector's :class:`~medood.detectors.calibration.Calibration` (``detector.calibration``);
            its :meth:`~medood.detectors.calibration.Calibration.thresholds` give the thresholds and the overlay
            colour window, read at the first case (i.e. after the weights are loaded).
        map_percentile: healthy map-value percentile used as mask threshold. Defaults to 99.5.
        score_percentile: healthy image-score percentile used for ``flagged``. Defaults to 95.
        save_maps: write the map NIfTI files. Defaults to ``True``.
        window: ``(low, high)`` map values for 2D overlay colours (dataset-level); ``None`` uses the
            calibration's window, else ``(0, max)`` of the map.
        map_name: the map's kind in the file names, ``<case>_<map_name>_map.nii.gz`` (``_seg``, ``_overlay.png``):
            ``"anomaly"`` for anomaly maps, e.g. ``"cam"`` for a map that explains a score. Defaults to
            ``"anomaly"``.
        case_key: an item / batch field naming the case (e.g. ``"case"`` for images read from an array file,
            which have no file name); ``None`` names cases after the map's source file. Defaults to ``None``.

    Slice scores are written as the engine output carries them (``slice_scores``, computed by the inferer);
    ``thresholds.json`` records the thresholds and colour window the run used.
        overwrite: replace existing outputs of the same case; with ``False`` an existing file is an error
            raised before anything of that case is written. Defaults to ``True``.
        run_mode: how the run treats an output folder that holds another run (:class:`medood.io.RunFolder`):
            ``"new"`` refuses it, ``"resume"`` continues a run of the same settings, ``"overwrite"`` clears it;
            ``None`` reads ``MEDOOD_RUN_MODE``, else ``"new"``. Stale temporaries are removed in every mode.
        config: what identifies the run's settings in ``run.json`` (e.g. the bundle's parsed config); the writer's
            own settings are always added.
        case_files: files the run writes per case besides the writer's own, as patterns of ``{case}`` (e.g.
            ``["{case}_seg.nii.gz"]`` for a bundle's ``SaveImaged``): a resumed case needs them whole. Defaults to
            ``()``.
        score_rule: what a given ``score_threshold`` guarantees (rule, ``alpha``, ``n`` ...), recorded as
            ``score_rule`` in ``thresholds.json``. Defaults to ``None`` (the calibration's rule, if any).
        output_transform: maps ``engine.state.output`` to a list of per-case dicts. Defaults to identity.
        batch_transform: maps ``engine.state.batch`` to a list of per-case dicts (for labels kept in the
            batch only). Defaults to identity.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        map_key: str = "pred",
        score_key: str = OODKeys.SCORE.value,
        label_key: str | None = None,
        threshold: float | None = None,
        score_threshold: float | None = None,
        calibration: Calibration | None = None,
        map_percentile: float = 99.5,
        score_percentile: float = 95.0,
        save_maps: bool = True,
        window: tuple[float, float] | None = None,
        map_name: str = "anomaly",
        case_key: str | None = None,
        overwrite: bool = True,
        run_mode: str | None = None,
        config: dict[str, Any] | None = None,
        score_rule: dict[str, Any] | None = None,
        case_files: Sequence[str] = (),
        output_transform: Callable[[Any], Any] = lambda x: x,
        batch_transform: Callable[[Any], Any] = lambda x: x,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.map_key, self.score_key, self.label_key = map_key, score_key, label_key
        self.threshold = None if threshold is None else float(threshold)
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self.calibration, self.map_percentile, self.score_percentile = calibration, map_percentile, score_percentile
        self.save_maps, self.window, self.overwrite = save_maps, window, overwrite
        self.map_name, self.case_key = map_name, case_key
        self.score_rule = None if score_rule is None else dict(score_rule)
        self.case_files = list(case_files)
        self.output_transform, self.batch_transform = output_transform, batch_transform
        settings = {
            "map_name": map_name,
            "threshold": threshold,
            "score_threshold": score_threshold,
            "map_percentile": map_percentile,
            "score_percentile": score_percentile,
            "save_maps": save_maps,
        }
        self.run = RunFolder(self.output_dir, {**(config or {}), "writer": settings}, run_mode, map_name)
        self.resume = ResumableRun(self.run)
        self.reset()

    def reset(self) -> None:
        """Forget the rows collected so far."""
        self.rows: list[dict[str, Any]] = []
        self.slice_rows: list[tuple[str, int, int, float]] = []
        self._seen: dict[str, str] = {}
        self._resolved = False
        self.thresholds: dict[str, Any] = {}
        self._names: dict[str, str] = {}  # input file -> case name, from the whole datalist
        self.resume.reset()

    def start(self, engine: Engine | None = None) -> None:
        """Take the output folder for this run (rank 0: :meth:`medood.io.RunFolder.start`).

        A resumed run (``run_mode="resume"``) keeps the cases whose outputs are complete (their row in the last
        ``scores.csv`` or in a progress journal of a killed run, and every file of the case present, the map
        readable) and, given the engine, replaces its data loader by one over the batches that hold another case
        (:func:`medood.data.shard.subset_loader`; whole batches of the loader, so that every case is computed in the
        batch an uninterrupted run puts it in): the network never runs on a batch of kept cases again.
        """
        self.reset()
        self.resume.start(engine, self._complete_cases, lambda items: datalist_cases(items, self.case_key))
        items, names = self.resume.items or [], self.resume.names or []
        self._names = {str(item["image"]): str(n) for item, n in zip(items, names, strict=True) if _has_image(item, n)}

    def _case_files(self, case: str, suffixes: Sequence[str], files: Sequence[Path] = ()) -> list[str]:
        """The files a complete case has: its maps (``suffixes`` or written ``files``) and ``case_files``."""
        own = [case + m for m in suffixes] + [p.name for p in files]
        return own + [f.format(case=case) for f in self.case_files]

    def _complete_cases(self) -> dict[str, dict[str, Any]]:
        """The cases of a resumed run whose outputs are complete and valid (rank 0, after ``RunFolder.start``)."""
        found: dict[str, dict[str, Any]] = {}
        previous = set(self.run.previous_cases)
        scores = self.output_dir / rf.SCORES_CSV
        if previous and scores.is_file():
            slices: dict[str, list[list[Any]]] = {}
            if (self.output_dir / rf.SLICE_SCORES_CSV).is_file():
                for case, axis, idx, value in rf.read_slice_scores(self.output_dir / rf.SLICE_SCORES_CSV):
                    slices.setdefault(case, []).append([axis, idx, value])
            maps = [rf.map_suffix(self.map_name)] if self.save_maps else []
            for r in rf.read_score_rows(scores):
                if r.case in previous:
                    row = {"case": r.case, "score": r.score, "flagged": r.flagged, "label": r.label, "image": r.image}
                    files = self._case_files(r.case, maps)
                    found[r.case] = {"row": row, "slices": slices.get(r.case, []), "files": files}
        found.update(self.run.progress())
        return {case: rec for case, rec in found.items() if outputs_valid(self.output_dir, rec.get("files", []))}

    def attach(self, engine: Engine) -> None:
        """Attach to an Ignite engine."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, lambda _e: self.finalize())

    def __call__(self, engine: Engine) -> None:
        """Write the outputs of the current iteration."""
        outputs = self.output_transform(engine.state.output)
        batches = self.batch_transform(engine.state.batch)
        if isinstance(outputs, dict):
            outputs = [outputs]
        if isinstance(batches, dict):
            batches = [batches]
        for i, item in enumerate(outputs):
            extra = batches[i] if isinstance(batches, list) and i < len(batches) else {}
            self.write_case(item, extra)

    # ------------------------------------------------------------------ per case
    def _unique_case(self, source: str) -> str:
        """The case name of input ``source``: the datalist's (clashes resolved in datalist order) when known."""
        known = self._names.get(source)
        if known is not None:
            self._seen[known] = source
            if known != case_name(source):
                logger.warning("two inputs share the case name of %s; writing it as %r", source, known)
            return known
        return unique_case(case_name(source), source, self._seen)

    def resolve_thresholds(self) -> dict[str, Any]:
        """Take missing thresholds and the window from the healthy calibration and write ``thresholds.json``.

        Done once per run, at the first case unless called before (after the detector's state is loaded);
        returns the record (:func:`thresholds_record`, ``score_rule`` completed by the writer's ``score_rule``).
        """
        if self._resolved:
            return self.thresholds
        record = thresholds_record(
            self.calibration, self.map_percentile, self.score_percentile,
            map_threshold=self.threshold, score_threshold=self.score_threshold, window=self.window,
        )  # fmt: skip
        if self.score_rule is not None:
            record["score_rule"] = {**(record["score_rule"] or {}), **self.score_rule}
        self.threshold, self.score_threshold = record["map_threshold"], record["score_threshold"]
        self.window = None if record["window"] is None else (record["window"][0], record["window"][1])
        if self.threshold is None and self.save_maps:
            logger.warning(
                "no map threshold (none given, none calibrated): no *_%s_seg masks are written", self.map_name
            )
        self.calibration, self.thresholds, self._resolved = None, record, True
        write_thresholds(self.output_dir, record)
        return record

    def write_case(self, item: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
        """Write one case's files and collect its rows; returns the case name.

        ``item`` holds the case's :class:`~medood.io.OODResult` under ``ood_result`` (what
        :class:`~medood.engines.OODEvaluator` adds); an item without one (a custom engine) is turned into a result
        from ``map_key`` / ``score_key`` by a default :class:`~medood.inferers.OODInferer`.
        """
        result = item.get(RESULT_KEY)
        if not isinstance(result, OODResult):
            result = _fallback_result(item, extra or {}, self.map_key, self.score_key, self.case_key, self.label_key)
        if self.label_key is not None and result.label is None:
            lab = item.get(self.label_key, (extra or {}).get(self.label_key))
            result.label = None if lab is None else int(np.asarray(_to_numpy(lab)).reshape(-1)[0])
        named = None if self.case_key is None else item.get(self.case_key, (extra or {}).get(self.case_key))
        source = None if named is None else str(_to_numpy(named).reshape(-1)[0]).replace("/", "_")
        return self.write_result(result, source, item.get("image"))

    def write_result(self, result: OODResult, source: str | None = None, image: Any = None) -> str:
        """Decide, name and write one :class:`~medood.io.OODResult` (every source of results ends here).

        Args:
            result: the case's result; ``flagged`` / ``threshold`` are set from the run's score threshold and
                ``case`` from the datalist's case names.
            source: what names the case (default: the result's input file, else its case).
            image: the case's image on the map's grid (2D overlays of inputs read from arrays).

        Returns:
            the case name. A result without a map is allowed with ``save_maps=False`` (a score-only source such
            as :class:`~medood.handlers.guard.GuardScoreWriter`): it gives a row and no file.
        """
        if not self.resume.started:
            self.start()
        self.resolve_thresholds()
        result.decide(self.score_threshold)
        source = source or result.image or result.case or f"case_{len(self.rows):04d}"
        case = result.case = self._unique_case(source)
        amap = result.anomaly_map
        if amap is None and not self.save_maps:
            self._collect(result)
            return case
        if amap is None:
            raise ValueError(f"case {case}: no anomaly map to write (a detector without maps: use save_maps=False)")
        meta = getattr(amap, "meta", {}) or {}
        arr = _to_numpy(amap)
        if arr.ndim >= 3 and arr.shape[0] == 1:
            arr = arr[0]
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        targets = self._targets(case, arr.ndim)
        if not self.overwrite:
            existing = [str(p) for p in targets if p.exists()]
            if existing:
                raise FileExistsError(f"{existing[0]} exists and overwrite=False; nothing of case {case!r} was written")
        if arr.ndim == 3:
            self._write_3d(case, arr, meta)
        elif arr.ndim == 2:
            self._write_2d(case, arr, meta, image)
        else:
            raise ValueError(f"{source}: anomaly map has {arr.ndim} spatial dims after squeezing; expected 2 or 3")
        self._collect(result, [p for p in targets if p.is_file()])
        return case

    def _targets(self, case: str, ndim: int) -> list[Path]:
        out = [self.output_dir / rf.map_file(case, self.map_name)] if self.save_maps else []
        if self.threshold is not None:
            out.append(self.output_dir / rf.seg_file(case, self.map_name))
        if ndim == 2:
            out.append(self.output_dir / rf.overlay_file(case, self.map_name))
        return out

    def _write_3d(self, case: str, arr: np.ndarray, meta: dict[str, Any]) -> None:
        affine = meta.get("affine", meta.get("original_affine"))
        if affine is None:
            raise ValueError(
                f"case {case}: the anomaly map has no affine in its metadata; invert the preprocessing first"
            )
        affine = _to_numpy(affine).astype(np.float64)
        shape = meta.get("spatial_shape")
        if shape is not None and tuple(int(s) for s in _to_numpy(shape).tolist()) != arr.shape:
            raise ValueError(
                f"case {case}: map shape {arr.shape} differs from the input's {tuple(_to_numpy(shape).tolist())}; "
                "add Invertd to the postprocessing so maps are written on the input grid"
            )
        codes = (int(meta.get("qform_code", 1) or 1), int(meta.get("sform_code", 1) or 1))  # the input's codes
        if self.save_maps:
            write_map_nifti(arr, affine, self.output_dir / rf.map_file(case, self.map_name), codes=codes)
        if self.threshold is not None:
            write_map_nifti(
                arr >= self.threshold, affine, self.output_dir / rf.seg_file(case, self.map_name), np.uint8, codes
            )

    def _write_2d(self, case: str, arr: np.ndarray, meta: dict[str, Any], fallback: Any = None) -> None:
        if self.save_maps:
            write_map_nifti_2d(arr, self.output_dir / rf.map_file(case, self.map_name))
        if self.threshold is not None:
            write_map_nifti_2d(
                (arr >= self.threshold).astype(np.uint8), self.output_dir / rf.seg_file(case, self.map_name)
            )
        source = meta.get("filename_or_obj")
        if source and Path(str(source)).is_file():
            image = _to_numpy(read_image_2d(source))
        elif fallback is not None and tuple(fallback.shape[-2:]) == arr.shape:  # no file (an array dataset):
            image = _to_numpy(fallback)  # the item's image, when the postprocessing inverted it to the map's grid
        else:
            image = np.zeros_like(arr)
        if image.shape[-2:] != arr.shape:
            raise ValueError(f"{source}: image {image.shape[-2:]} and map {arr.shape} differ; invert the preprocessing")
        write_overlay_png(
            image, arr, None, self.output_dir / rf.overlay_file(case, self.map_name), map_range=self._window(arr)
        )

    def _window(self, arr: np.ndarray) -> tuple[float, float]:
        if self.window is not None:
            return float(self.window[0]), float(self.window[1])
        return 0.0, float(max(arr.max(), 1e-12))

    def _collect(self, result: OODResult, files: Sequence[Path] = ()) -> None:
        row = result.row()
        slices = [
            (result.case, int(axis), i, float(v))
            for axis, values in sorted(result.slice_scores.items())
            for i, v in enumerate(_to_numpy(values).tolist())
        ]
        self.rows.append(row)
        self.slice_rows.extend(slices)
        # the journal a resumed run reads (kill -9 safe: after the case's files are written); a kept case done again
        # loses its kept row
        self.resume.record(result.case, row, [s[1:] for s in slices], self._case_files(result.case, [], files))

    def finalize(self) -> None:
        """Write ``scores.csv``, ``slice_scores.csv`` and ``run.json`` (atomically; rank 0 of a sharded run).

        Every rank's rows are gathered (:func:`medood.data.shard.merge_rows`) with the kept rows of a resumed run
        and written in datalist order: the files one uninterrupted process writes.
        """
        kept = [(rec["row"], [(case, *s) for s in rec["slices"]]) for case, rec in self.resume.kept.items()]
        by_case: dict[str, list[tuple[str, int, int, float]]] = {}
        for sl in self.slice_rows:
            by_case.setdefault(sl[0], []).append(sl)
        own = [(r, by_case.get(r["case"], [])) for r in self.rows]
        merged = self.resume.merge(own, kept, _case_of)  # datalist order across ranks, the kept rows in their places
        if get_rank() != 0:
            return
        self.rows = [r for r, _ in merged]
        self.slice_rows = [s for _, sl in merged for s in sl]
        if not self.rows:
            logger.warning("OODResultWriter: no case was scored; no CSV written")
            self.resume.finish([], status="empty")
            return
        rf.write_score_rows(self.output_dir / rf.SCORES_CSV, self.rows)
        if self.slice_rows:
            rf.write_slice_scores(self.output_dir / rf.SLICE_SCORES_CSV, self.slice_rows)
        self.resume.finish([r["case"] for r in self.rows])
        logger.info("wrote %d cases to %s", len(self.rows), self.output_dir)


def _case_of(row_and_slices: tuple[dict[str, Any], Any]) -> str:
    return str(row_and_slices[0]["case"])


def _has_image(item: Any, name: str | None) -> bool:
    return name is not None and isinstance(item, dict) and isinstance(item.get("image"), (str, os.PathLike))


def _fallback_result(
    item: dict[str, Any], extra: dict[str, Any], map_key: str, score_key: str, case_key: str | None,
    label_key: str | None,
) -> OODResult:  # fmt: skip
    """An :class:`~medood.io.OODResult` of an engine output without one (a plain evaluator's ``pred`` / score)."""
    if item.get(score_key) is None:
        raise KeyError(f"the engine output has no {score_key!r} (run an OODEvaluator)")
    view = {**item, "pred": item[map_key], OODKeys.SCORE.value: item[score_key]}
    return OODInferer(case_key=case_key).case_result(view, extra, label_key)
