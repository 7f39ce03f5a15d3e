"""``report.html``: one self-contained page per run folder (images inlined as base64 PNG, inline SVG, no JS).

:func:`write_report` reads the run's OUTPUT folder (:mod:`medood.reports.run_dir`) and writes, beside
``worst_slices.png``:

* the run's thresholds (healthy calibration) and ``metrics.json`` when labels existed;
* the score distribution of the run's cases against the in-distribution reference (the healthy calibration
  scores in ``thresholds.json``, else the run's label-0 cases), with the score threshold;
* per case (highest score first): the slice-score curve along each axis of ``slice_scores.csv`` and the worst
  slices with the map overlaid at the run's fixed colour window (3D), or the overlay image (2D).

A Content-Security-Policy forbids every external load, so the page opens offline and shows the same anywhere.
The file is written atomically.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from medood.reports.montage import overlay_tile
from medood.reports.run_dir import CaseOutputs, RunOutputs, read_run
from medood.reports.svg import histogram_svg, line_svg
from medood.utils.io import atomic_write_text

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.case{margin:1em 0;padding:.5em;border:1px solid #ddd}
.tiles img{margin:2px;image-rendering:pixelated}.note{color:#666;font-size:.9em}.flag{color:#d62728;font-weight:bold}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _png_uri(rgb: np.ndarray, scale: int = 2) -> str:
    img = Image.fromarray(rgb)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)  # not-a-file-write (an in-memory buffer)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}" title="{escape(alt)}">'


def _volume(path: Path | None) -> np.ndarray | None:
    """The volume in RAS voxel order (what the radiological tiles of :func:`overlay_tile` expect)."""
    if path is None or not str(path).endswith((".nii", ".nii.gz")):
        return None
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))  # type: ignore[attr-defined]
        return np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # a missing or unreadable input only costs the report its background
        logger.warning("report: cannot read %s (%s); drawing the map alone", path, e)
        return None


def _ras_axis(path: Path, axis: int, scores: list[float]) -> tuple[int, list[float]]:
    """A file voxel axis and its slice scores, as the RAS axis and RAS-ordered scores of the canonical volume."""
    ornt = nib.io_orientation(nib.load(str(path)).affine)  # type: ignore[attr-defined]
    ras, flip = int(ornt[axis][0]), ornt[axis][1] < 0
    return ras, list(scores[::-1]) if flip else list(scores)


def _worst_slices(case: CaseOutputs, window: Any, lesion: Path | None, n: int) -> list[str]:
    """Overlay tiles of the ``n`` highest-scoring slices of a 3D case (map alone when the input is unknown)."""
    amap = _volume(case.anomaly_map)
    if amap is None or amap.ndim != 3 or min(amap.shape) == 1:
        return []
    image, mask = _volume(case.image), _volume(lesion)
    if image is not None and image.shape[:3] != amap.shape:
        logger.warning("report: %s and its map differ in shape; drawing the map alone", case.image)
        image = None
    if image is not None and image.ndim == 4:
        image = image[..., 0]
    axis, scores = next(iter(case.slice_scores.items()), (2, []))
    axis, scores = _ras_axis(case.anomaly_map, axis % 3, scores)  # type: ignore[arg-type]
    if len(scores) != amap.shape[axis]:
        scores = list(np.moveaxis(amap, axis, 0).reshape(amap.shape[axis], -1).max(1))
    order = [int(i) for i in np.argsort(-np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf))[:n]]
    tiles = []
    for idx in order:
        m2 = np.take(amap, idx, axis=axis)
        i2 = np.take(image, idx, axis=axis) if image is not None else np.zeros_like(m2)
        l2 = np.take(mask, idx, axis=axis) if mask is not None and mask.shape == amap.shape else None
        alt = f"{case.name} axis {axis} slice {idx} score {scores[idx]:.4g}"
        tiles.append(_img(_png_uri(overlay_tile(i2, m2, l2, window)), alt))
    return tiles


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            rows.append(f'<tr><td class="l">{escape(prefix)}</td><td>{value:.4g}</td></tr>')

    walk("", metrics)
    if not rows:
        return '<p class="note">metrics.json holds no numbers.</p>'
    return '<table><tr><th class="l">metric</th><th>value</th></tr>' + "".join(rows) + "</table>"


def _fmt(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _scores_table(run: RunOutputs) -> str:
    head = '<tr><th class="l">case</th><th>score</th><th>label</th><th>flagged</th></tr>'
    rows = [
        f'<tr><td class="l">{escape(c.name)}</td><td>{_fmt(c.score)}</td><td>{"" if c.label is None else c.label}'
        f"</td><td>{'<span class=flag>yes</span>' if c.flagged else ('no' if c.flagged == 0 else '')}</td></tr>"
        for c in _ranked(run.cases)
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _ranked(cases: list[CaseOutputs]) -> list[CaseOutputs]:
    return sorted(cases, key=lambda c: -(c.score if c.score is not None else -math.inf))


def _distribution(run: RunOutputs) -> str:
    ref = run.id_scores
    groups: dict[str, list[float]] = {}
    counts: dict[str, int | None] = {}
    if ref:
        from_cal = bool(run.thresholds.get("id_scores"))
        name = "ID reference (healthy calibration)" if from_cal else "ID cases in this run"
        groups[name] = ref
        if from_cal:  # the stored values are quantiles: n is the number of calibration images
            counts[name] = run.n_calibration
    labelled = any(c.label is not None for c in run.cases)
    for name, keep in (("run: label 1 (OOD)", 1), ("run: label 0 (ID)", 0)) if labelled else ():
        groups[name] = [c.score for c in run.cases if c.label == keep and c.score is not None]
    if not labelled:
        groups["run cases"] = [c.score for c in run.cases if c.score is not None]
    if not any(groups.values()):
        return '<p class="note">No scores in scores.csv.</p>'
    markers = {"score threshold": run.score_threshold} if run.score_threshold is not None else {}
    note = "" if ref else '<p class="note">No in-distribution reference: thresholds.json has no id_scores.</p>'
    return histogram_svg(groups, markers, title="score distribution", counts=counts) + note  # type: ignore[arg-type]


def _case_section(case: CaseOutputs, run: RunOutputs, lesion: Path | None, n_slices: int) -> str:
    flag = ' <span class="flag">flagged</span>' if case.flagged else ""
    parts = [f'<div class="case" id="case-{escape(case.name)}"><h3>{escape(case.name)}{flag}</h3>']
    parts.append(f"<p>score {_fmt(case.score)}" + ("" if case.label is None else f", label {case.label}") + "</p>")
    for axis, values in case.slice_scores.items():
        parts.append(line_svg(values, run.map_threshold, x_label=f"slice (voxel axis {axis})", title="slice scores"))
    tiles = _worst_slices(case, run.window, lesion, n_slices)
    if not tiles and case.overlay is not None:
        tiles = [_img(_file_uri(case.overlay), f"{case.name} overlay")]
    if tiles:
        parts.append('<div class="tiles">' + "".join(tiles) + "</div>")
    return "".join(parts) + "</div>"


def _thresholds_line(run: RunOutputs) -> str:
    window = run.window
    return (
        f"<p>map threshold {_fmt(run.map_threshold) or 'not calibrated'}; score threshold "
        f"{_fmt(run.score_threshold) or 'not calibrated'}; colour window "
        f"{'per map (not calibrated)' if window is None else f'{window[0]:.4g} to {window[1]:.4g}'} "
        "(from healthy calibration data, the same for every case). Higher = more anomalous.</p>"
    )


def write_report(
    run_dir: str | os.PathLike[str] | RunOutputs,
    images: Mapping[str, str | os.PathLike[str]] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    lesions: Mapping[str, str | os.PathLike[str]] | None = None,
    filename: str = "report.html",
    max_cases: int = 40,
    slices_per_case: int = 3,
) -> Path:
    """Write ``report.html`` into a run folder (see the module docstring).

    Args:
        run_dir: the run folder, or a run read with :func:`~medood.reports.run_dir.read_run`.
        images: ``{case: input path}`` (overrides ``scores.csv``'s ``image`` column).
        images_dir: folder searched for ``<case>.<ext>`` inputs.
        lesions: ``{case: lesion mask path}``, outlined in green on the worst slices.
        filename: the page's name in the run folder. Defaults to ``"report.html"``.
        max_cases: cases shown in detail, highest score first (all are in the table). Defaults to 40.
        slices_per_case: worst slices drawn per 3D case. Defaults to 3.

    Returns:
        The page's path.
    """
    run = run_dir if isinstance(run_dir, RunOutputs) else read_run(run_dir, images, images_dir)
    lesions = lesions or {}
    html = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>medood report: {escape(run.root.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>medood run report: {escape(run.root.name)}</h1>",
        f'<p class="note">{escape(str(run.root.resolve()))}: {len(run.cases)} cases.</p>',
        "<p class=\"note\">Slices are shown in radiological convention: the patient's right on the image's left "
        "(R / L marked on every slice), anterior up, as 3D Slicer shows them.</p>",
        _thresholds_line(run),
    ]
    if run.metrics:
        html += ["<h2>Metrics</h2>", _metrics_table(run.metrics)]
    if run.results:
        html += ["<h2>Results (results.json)</h2>", _metrics_table(run.results)]
    html += ["<h2>Score distribution</h2>", _distribution(run), "<h2>Scores</h2>", _scores_table(run)]
    montage = run.root / "worst_slices.png"
    if montage.is_file():
        html += ["<h2>Worst slices of the run</h2>", _img(_file_uri(montage), "worst slices")]
    shown = _ranked(run.cases)[:max_cases]
    html.append(f"<h2>Cases ({len(shown)} of {len(run.cases)}, highest score first)</h2>")
    for case in shown:
        lesion = lesions.get(case.name)
        html.append(_case_section(case, run, Path(lesion) if lesion else None, slices_per_case))
    html.append("</body></html>\n")
    return atomic_write_text(run.root / filename, "\n".join(html))
