"""Metrics from files on disk: a scores CSV with labels, and folders of anomaly maps and lesion masks.

These back ``medood evaluate`` and can be called from Python. Bad input raises
:class:`~medood.data.errors.DataError` naming the file and the problem.

Scores CSV: a header with ``case,score`` (or ``ood_score``) and optionally ``label`` (1 = OOD, 0 = ID), as
:class:`medood.handlers.OODResultWriter` writes it (its ``flagged`` column is a thresholded *prediction* and
is ignored). A labels CSV has ``case,label`` (or ``case,is_ood``); labels may be ``0/1``, ``true/false`` or
``id/ood``. If both files carry labels they must agree; every scored case needs a label and every labelled case
a score.

Map folders: every ``<case>_anomaly_map.nii.gz`` (or ``.nii``) is paired with the first existing mask among
``<case>_lesion``, ``<case>``, ``<case>_seg``, ``<case>_label`` (``.nii.gz`` before ``.nii``) and, if a
foreground folder is given, with the first of ``<case>_brainmask``, ``<case>_brain_mask``,
``<case>_foreground``, ``<case>_mask``, ``<case>``. Mask voxels ``> 0.5`` are lesion / foreground. Cases are
read one at a time, so with ``max_voxels`` the memory stays bounded.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medood.data.errors import DataError
from medood.io import run_folder as rf
from medood.metrics.functional import (
    ap_from_counts,
    aupr_in,
    aupr_out,
    auroc,
    auroc_from_split,
    average_precision,
    fpr_at_tpr,
    rank_counts,
    slice_level_metrics,
)
from medood.metrics.segmentation import DiceCounter, VoxelPool, best_dice_from_split
from medood.utils.io import atomic_write_text, case_name
from medood.utils.reduce import reduce_slices

__all__ = [
    "FOREGROUND_SUFFIXES",
    "MASK_SUFFIXES",
    "evaluate_map_folders",
    "evaluate_scores",
    "load_case",
    "pair_map_files",
    "read_labels",
    "read_scores",
]

logger = logging.getLogger(__name__)

#: Mask file stems tried for case ``c``, in order (``c + suffix``).
MASK_SUFFIXES = ("_lesion", "", "_seg", "_label")
#: Foreground (brain) mask stems tried for case ``c``, in order.
FOREGROUND_SUFFIXES = ("_brainmask", "_brain_mask", "_foreground", "_mask", "")
MAP_SUFFIX = rf.map_suffix(ext="")  # "_anomaly_map": medood.io.run_folder's, without the extension


def _parse_label(raw: str, path: Path, line: int) -> int | None:
    value = raw.strip().lower()
    if value == "":
        return None
    if value in ("1", "1.0", "true", "ood"):
        return 1
    if value in ("0", "0.0", "false", "id"):
        return 0
    raise DataError(path, f"line {line}: label {raw!r} is not 0/1 (1 = OOD)")


def _read_rows(path: Path, value_cols: tuple[str, ...]) -> tuple[list[tuple[int, dict[str, str]]], str | None]:
    """Rows of a CSV with a ``case`` column, and the first of ``value_cols`` that the header has."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "case" not in header:
            raise DataError(path, f"has no 'case' column (header: {header})")
        reader.fieldnames = header
        rows = [(i + 2, row) for i, row in enumerate(reader)]
    col = next((c for c in value_cols if c in header), None)
    seen: set[str] = set()
    for line, row in rows:
        case = (row.get("case") or "").strip()
        if not case:
            raise DataError(path, f"line {line}: empty case name")
        if case in seen:
            raise DataError(path, f"line {line}: case {case!r} appears twice")
        seen.add(case)
    return rows, col


def read_scores(path: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Read ``case,score[,label]``; returns the scores and the labels present (empty cells skipped)."""
    rows, col = _read_rows(path, ("score", "ood_score"))
    if col is None:
        raise DataError(path, "has no 'score' column", hint="expected a header like case,score[,label]")
    scores: dict[str, float] = {}
    labels: dict[str, int] = {}
    for line, row in rows:
        case = row["case"].strip()
        try:
            value = float(row[col])
        except (TypeError, ValueError):
            raise DataError(path, f"line {line}: score {row[col]!r} of case {case!r} is not a number") from None
        if math.isnan(value):
            raise DataError(path, f"line {line}: score of case {case!r} is NaN")
        scores[case] = value
        label = _parse_label(row.get("label") or "", path, line)
        if label is not None:
            labels[case] = label
    return scores, labels


def read_labels(path: Path) -> dict[str, int]:
    """Read ``case,label`` (or ``case,is_ood``) with 1 = OOD."""
    rows, col = _read_rows(path, ("label", "is_ood"))
    if col is None:
        raise DataError(path, "has no 'label' column", hint="expected a header like case,label")
    labels: dict[str, int] = {}
    for line, row in rows:
        label = _parse_label(row[col] or "", path, line)
        if label is None:
            raise DataError(path, f"line {line}: case {row['case'].strip()!r} has no label")
        labels[row["case"].strip()] = label
    return labels


def _few(names: set[str] | list[str], n: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _join_labels(scores_path: Path, scores: dict[str, float], labels: dict[str, int], source: Path) -> np.ndarray:
    missing = set(scores) - set(labels)
    if missing:
        raise DataError(source, f"no label for {len(missing)} of {len(scores)} scored cases: {_few(missing)}")
    extra = set(labels) - set(scores)
    if extra:
        raise DataError(scores_path, f"no score for {len(extra)} labelled cases: {_few(extra)}")
    return np.array([labels[c] for c in scores], dtype=np.int64)


def evaluate_scores(scores_path: Path, labels_path: Path | None = None, tpr: float = 0.95) -> dict[str, Any]:
    """Image-level metrics of a scores CSV (formats in the module docstring).

    Args:
        scores_path: CSV with ``case,score[,label]``.
        labels_path: optional CSV with ``case,label``. Defaults to ``None`` (labels from ``scores_path``).
        tpr: TPR of the FPR metrics. Defaults to 0.95.

    Returns:
        A JSON-ready dict with ``metrics`` and counts.

    Raises:
        DataError: on malformed files, missing or conflicting labels, or one-class data.
    """
    scores, inline = read_scores(scores_path)
    labels, source = inline, scores_path
    if labels_path is not None:
        labels, source = read_labels(labels_path), labels_path
        conflict = {c for c, v in inline.items() if c in labels and labels[c] != v}
        if conflict:
            raise DataError(labels_path, f"labels disagree with {scores_path} for: {_few(conflict)}")
    y = _join_labels(scores_path, scores, labels, source)
    s = np.array(list(scores.values()), dtype=np.float64)
    if y.min() == y.max():
        kind = "OOD" if y[0] else "ID"
        raise DataError(source, f"all {y.size} cases are {kind}; OOD metrics need both ID and OOD cases")
    metrics = {
        "auroc": auroc(s, y),
        "aupr_in": aupr_in(s, y),
        "aupr_out": aupr_out(s, y),
        "fpr95": fpr_at_tpr(s, y, tpr, positive="id"),
        "fpr95_ood": fpr_at_tpr(s, y, tpr, positive="ood"),
    }
    return {"metrics": metrics, "n_id": int((y == 0).sum()), "n_ood": int(y.sum()), "tpr": tpr}


# ----------------------------------------------------------------------------------------------- voxel level
def _find(folder: Path, case: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for ext in (".nii.gz", ".nii"):
            path = folder / f"{case}{suffix}{ext}"
            if path.is_file():
                return path
    return None


def _require_dir(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder")
    if not path.is_dir():
        raise DataError(path, "is not a folder")


def pair_map_files(
    maps_dir: Path, masks_dir: Path, foreground_dir: Path | None = None
) -> list[tuple[str, Path, Path, Path | None]]:
    """Pair every anomaly map with its lesion mask (and foreground mask) by the rules in the module docstring.

    Args:
        maps_dir: folder of ``<case>_anomaly_map.nii.gz`` files.
        masks_dir: folder of lesion masks.
        foreground_dir: optional folder of foreground masks. Defaults to ``None``.

    Returns:
        ``(case, map, mask, foreground or None)`` per case, sorted by case.

    Raises:
        DataError: when there is no map, or some map has no mask / foreground mask (a few are listed).
    """
    for folder in (maps_dir, masks_dir, foreground_dir):
        if folder is not None:
            _require_dir(folder)
    maps: dict[str, Path] = {}
    for ext in (".nii", ".nii.gz"):  # .nii.gz wins when both exist
        for path in maps_dir.glob(f"*{MAP_SUFFIX}{ext}"):
            maps[path.name[: -len(MAP_SUFFIX + ext)]] = path
    if not maps:
        raise DataError(maps_dir, f"contains no *{MAP_SUFFIX}.nii.gz files")
    pairs = []
    no_mask, no_fg = [], []
    for case in sorted(maps):
        mask = _find(masks_dir, case, MASK_SUFFIXES)
        fg = None if foreground_dir is None else _find(foreground_dir, case, FOREGROUND_SUFFIXES)
        if mask is None:
            no_mask.append(case)
        if foreground_dir is not None and fg is None:
            no_fg.append(case)
        pairs.append((case, maps[case], mask, fg))
    if no_mask:
        raise DataError(
            masks_dir,
            f"no lesion mask for {len(no_mask)} of {len(maps)} maps: {_few(no_mask)}",
            hint="expected <case>_lesion.nii.gz, <case>.nii.gz, <case>_seg.nii.gz or <case>_label.nii.gz",
        )
    if no_fg and foreground_dir is not None:
        raise DataError(
            foreground_dir,
            f"no foreground mask for {len(no_fg)} of {len(maps)} maps: {_few(no_fg)}",
            hint="expected <case>_brainmask.nii.gz, <case>_brain_mask, <case>_foreground, <case>_mask or <case>",
        )
    return [(c, m, y, f) for c, m, y, f in pairs if y is not None]


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).dataobj)  # type: ignore[attr-defined]
    except Exception as err:  # nibabel raises many types for corrupt files
        raise DataError(path, f"cannot read as NIfTI ({type(err).__name__}: {err})") from err


def _like(ref: np.ndarray, ref_path: Path, arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """``arr > 0.5`` shaped like ``ref``; a shape mismatch (beyond singleton axes) names both files."""
    if arr.shape != ref.shape:
        squeeze = tuple(d for d in arr.shape if d != 1) == tuple(d for d in ref.shape if d != 1)
        if not squeeze:
            raise DataError(ref_path, f"map shape {ref.shape} does not match {what} {path} of shape {arr.shape}")
        arr = arr.reshape(ref.shape)
    return arr > 0.5


def load_case(map_path: Path, mask_path: Path, fg_path: Path | None) -> tuple[np.ndarray, np.ndarray, Any]:
    """Load and validate one case: ``(float32 map, bool lesion, bool foreground or None)``."""
    score_map = _load(map_path).astype(np.float32, copy=False)
    n_nan = int(np.isnan(score_map).sum())
    if n_nan:
        raise DataError(map_path, f"contains {n_nan} NaN voxels")
    lesion = _like(score_map, map_path, _load(mask_path), mask_path, "mask")
    fg = None if fg_path is None else _like(score_map, map_path, _load(fg_path), fg_path, "foreground mask")
    return score_map, lesion, fg


def _slices(
    score_map: np.ndarray,
    lesion: np.ndarray,
    fg: np.ndarray | None,
    axis: int,
    reduction: str,
    path: Path,
    given: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice scores and lesion flags along ``axis``; slices without foreground are dropped.

    ``given`` are the run's own slice scores (``slice_scores.csv``, the inferer's one reduction); without them the
    map is reduced here with ``reduction`` (maps made elsewhere, ``medood evaluate --maps``).
    """
    if not -score_map.ndim <= axis < score_map.ndim:
        raise DataError(path, f"slice axis {axis} out of range for a map of shape {score_map.shape}")
    ax = axis % score_map.ndim
    if given is not None and len(given) == score_map.shape[ax]:
        scores = np.asarray(given, dtype=np.float32)
    else:
        mask_t = None if fg is None else torch.from_numpy(fg)[None, None]
        scores = reduce_slices(torch.from_numpy(score_map)[None, None], ax, reduction, mask=mask_t)[0].numpy()
    inside = lesion if fg is None else lesion & fg
    has_lesion = np.asarray(np.moveaxis(inside, ax, 0).reshape(inside.shape[ax], -1).any(axis=1))
    if fg is None:
        return scores, has_lesion
    keep = np.asarray(np.moveaxis(fg, ax, 0).reshape(fg.shape[ax], -1).any(axis=1))
    return scores[keep], has_lesion[keep]


def _accumulate(
    pairs: list[tuple[str, Path, Path, Path | None]],
    pool: VoxelPool,
    counter: DiceCounter | None,
    slice_axis: int | None,
    slice_reduction: str,
    given: dict[str, list[float]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read the cases one at a time into the pool / Dice counter; return the pooled slice scores and flags."""
    slice_scores: list[np.ndarray] = [np.empty(0, np.float32)]
    slice_lesion: list[np.ndarray] = [np.empty(0, bool)]
    for case, map_path, mask_path, fg_path in pairs:
        score_map, lesion, fg = load_case(map_path, mask_path, fg_path)
        pool.add_arrays(score_map, lesion, fg)
        if counter is not None:
            counter.add_arrays(score_map, lesion, fg)
        if slice_axis is not None:
            s, y = _slices(score_map, lesion, fg, slice_axis, slice_reduction, map_path, (given or {}).get(case))
            slice_scores.append(s)
            slice_lesion.append(y)
    return np.concatenate(slice_scores), np.concatenate(slice_lesion)


def evaluate_map_folders(
    maps_dir: Path,
    masks_dir: Path,
    foreground_dir: Path | None = None,
    threshold: float | None = None,
    max_voxels: int | None = None,
    seed: int = 0,
    n_thresholds: int | None = None,
    slice_axis: int | None = None,
    slice_reduction: str = "max",
) -> dict[str, Any]:
    """Voxel-level (and optionally slice-level) metrics of a folder of anomaly maps against lesion masks.

    Args:
        maps_dir: folder of ``<case>_anomaly_map.nii.gz`` files.
        masks_dir: folder of lesion masks (pairing rules in the module docstring).
        foreground_dir: optional folder of foreground masks restricting every metric. Defaults to ``None``.
        threshold: map threshold for :func:`~medood.metrics.dice_at_threshold`. Defaults to ``None`` (skip).
        max_voxels: seeded random voxels kept per case for AP / best Dice (``None`` = all). Defaults to ``None``.
        seed: sub-sampling seed. Defaults to 0.
        n_thresholds: best Dice over quantile thresholds (``None`` = exact). Defaults to ``None``.
        slice_axis: voxel axis for slice-level AP / AUROC (``None`` = skip). Defaults to ``None``.
        slice_reduction: ``"max"``, ``"mean"`` or ``"topk"``. Defaults to ``"max"``.

    Returns:
        A JSON-ready dict with ``metrics`` and the settings used.

    Raises:
        DataError: on unpaired, unreadable, NaN or shape-mismatched files, or masks without lesion voxels.
    """
    pairs = pair_map_files(maps_dir, masks_dir, foreground_dir)
    return evaluate_pairs(pairs, threshold, max_voxels, seed, n_thresholds, slice_axis, slice_reduction, masks_dir)


def evaluate_pairs(
    pairs: list[tuple[str, Path, Path, Path | None]],
    threshold: float | None = None,
    max_voxels: int | None = None,
    seed: int = 0,
    n_thresholds: int | None = None,
    slice_axis: int | None = None,
    slice_reduction: str = "max",
    source: Path | None = None,
    given_slice_scores: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """Voxel- and slice-level metrics of ``(case, map, mask, foreground or None)`` file tuples.

    The arguments are those of :func:`evaluate_map_folders`; ``source`` is named in errors;
    ``given_slice_scores`` (``{case: scores along slice_axis}``) replace the reduction here where given.
    """
    pool = VoxelPool(max_voxels, seed)
    counter = None if threshold is None else DiceCounter(threshold)
    slice_scores, slice_lesion = _accumulate(pairs, pool, counter, slice_axis, slice_reduction, given_slice_scores)
    pos, neg = pool.split()
    if pos.size == 0:
        hint = "with --max-voxels a small lesion can be missed: raise it" if max_voxels else None
        raise DataError(source or Path("."), "the masks contain no lesion voxel (inside the foreground)", hint=hint)
    best = best_dice_from_split(pos, neg, n_thresholds)
    metrics: dict[str, float] = {
        "pixel_ap": ap_from_counts(rank_counts(pos, neg, "voxels")),
        "pixel_auroc": auroc_from_split(pos, neg),
        "best_dice": best.dice,
        "best_dice_threshold": best.threshold,
    }
    if counter is not None:
        dice = counter.result()
        metrics.update(dice=dice.pooled, dice_mean_per_case=dice.mean_per_case)
    if slice_axis is not None:
        metrics.update(slice_level_metrics(slice_scores, slice_lesion))
    return {
        "metrics": metrics,
        "n_cases": len(pairs),
        "n_voxels": pool.n_voxels,
        "max_voxels_per_case": max_voxels,
        "seed": seed,
        "threshold": threshold,
        "slice_axis": slice_axis,
        "slice_reduction": (
            None if slice_axis is None else ("the run's slice_scores.csv" if given_slice_scores else slice_reduction)
        ),
    }


def _run_slice_scores(path: Path, axis: int | None) -> dict[str, list[float]] | None:
    """``{case: slice scores along axis}`` of a run's ``slice_scores.csv`` (the inferer's one reduction)."""
    if axis is None or not path.is_file():
        return None
    out: dict[str, dict[int, float]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if int(row["axis"]) == axis:
                out.setdefault(rf.unescape_cell(row["case"]), {})[int(row["slice"])] = float(row["score"])
    return {c: [v[i] for i in range(len(v))] for c, v in out.items() if sorted(v) == list(range(len(v)))} or None


def evaluate_outputs(
    output_dir: str | Path,
    cases: list[dict[str, Any]],
    threshold: float | None = None,
    label_key: str = "is_anomalous",
    mask_key: str = "label",
    foreground_key: str | None = "brainmask",
    slice_axis: int | None = None,
    max_voxels: int | None = 200_000,
    seed: int = 0,
    out_file: str | Path | None = "metrics.json",
) -> dict[str, Any]:
    """Metrics of a bundle run: its ``scores.csv`` and maps in ``output_dir`` against the datalist's truth.

    Volume level: AUROC / AP / FPR95 of ``scores.csv`` against each case's ``label_key``. Voxel level (cases with a
    ``mask_key`` mask): pixel AP, pixel AUROC, the oracle best Dice (threshold chosen on these labels, as papers
    report it) and, when ``threshold`` is given (taken from healthy validation data), the Dice a user gets at it;
    slice AP / AUROC along ``slice_axis``. Maps are paired with their case through the input file name.

    Args:
        output_dir: the bundle's output folder.
        cases: the datalist (``{"image": path, label_key: 0|1, mask_key: path, foreground_key: path}``).
        threshold: map threshold from healthy data (``None`` = skip Dice at threshold).
        label_key: case-level ground truth (1 = anomalous). Defaults to ``"is_anomalous"``.
        mask_key: lesion-mask path. Defaults to ``"label"``.
        foreground_key: optional brain-mask path restricting voxel metrics. Defaults to ``"brainmask"``.
        slice_axis: voxel axis of slice metrics (``None`` = skip).
        max_voxels: seeded voxels kept per case. Defaults to 200_000.
        seed: sub-sampling seed. Defaults to 0.
        out_file: JSON written (atomically) into ``output_dir`` (``None`` = none). Defaults to ``"metrics.json"``.
    """
    out = Path(output_dir)
    result: dict[str, Any] = {}
    scores, _ = read_scores(out / rf.SCORES_CSV)
    labelled = [(case_name(c["image"]), int(c[label_key])) for c in cases if label_key in c]
    if labelled and len({y for _, y in labelled}) == 2:
        missing = [n for n, _ in labelled if n not in scores]
        if missing:
            raise DataError(out / "scores.csv", f"has no score for {_few(missing)}")
        s = np.array([scores[n] for n, _ in labelled])
        y = np.array([v for _, v in labelled])
        result["volume"] = {
            "auroc": auroc(s, y),
            "ap": average_precision(s, y),
            "fpr95": fpr_at_tpr(s, y, 0.95, positive="id"),
            "n_anomalous": int(y.sum()),
            "n_healthy": int((1 - y).sum()),
        }
    pairs = []
    for c in cases:
        mask = c.get(mask_key)
        if not mask:
            continue
        name = case_name(c["image"])
        amap = out / rf.map_file(name)
        if not amap.is_file():
            raise DataError(amap, f"missing: case {name} was not scored into {out}")
        fg = c.get(foreground_key) if foreground_key else None
        pairs.append((name, amap, Path(mask), Path(fg) if fg else None))
    if pairs:
        given = _run_slice_scores(out / rf.SLICE_SCORES_CSV, slice_axis)
        result["voxel"] = evaluate_pairs(pairs, threshold, max_voxels, seed, None, slice_axis, "max", out, given)
    if out_file is not None:
        atomic_write_text(out / out_file, json.dumps(result, indent=2, default=float) + "\n")
    return result
