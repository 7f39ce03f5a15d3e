"""The one benchmark of medood: bench sets -> every detector of each task -> ``docs/results.*``.

:func:`run_benchmark` builds (or reuses) the bench sets (:func:`medood.data.demo.bench.build_bench`) or reads
real datasets in their documented layouts (:mod:`medood.benchmark.real`), runs
:func:`~medood.benchmark.runner.run_task` per task, and writes
``results.json`` (schema in the module :mod:`medood.benchmark.page` writer and ``docs/results.md``),
``results.md``, ``results_scores.csv.gz`` and PNG plots. ``scripts/benchmark.py`` is its command line.

The per-method scripts (``scripts/bench_*.py``, ``scripts/diagnose_mim*.py``, ``scripts/tune_mim_validation.py``,
pages under ``docs/benchmarks/``) keep only what is specific to their method and share the rest from here:
:mod:`~medood.benchmark.bundles` (a bundle's configs, network, datalists, timed evaluator and workflow runs, map
quality), :mod:`~medood.benchmark.timing` (peak memory, median and paired timings, call timers),
:mod:`~medood.benchmark.tables` (markdown tables), :func:`~medood.benchmark.report.write_page` (JSON + page),
:mod:`~medood.benchmark.script` (common arguments, ``--render``), :mod:`~medood.benchmark.stage_maps` (the MIM
scripts' map sweeps on cached stage volumes: lesion size buckets, per-bucket map figures, worst-case choice),
:mod:`~medood.benchmark.mim_shift` with :mod:`~medood.benchmark.mim_shift_page` (the MIM / AR clean and
shifted-site sweep, its stage diagnoses and page), :mod:`~medood.benchmark.volume_scores` (candidate volume scores
of a map), :mod:`~medood.benchmark.mim_tuning` with :mod:`~medood.benchmark.mim_tuning_page` (the MIM flagging and
post-processing sweep on validation volumes, acquisition stress, their pages),
:mod:`~medood.benchmark.mim_diagnosis` with :mod:`~medood.benchmark.mim_diagnosis_page` (the MIM per-stage
diagnosis and its page) and :mod:`~medood.benchmark.features` (recorded layer features of a host network, the
spectral scripts' loop).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from medood.benchmark.maps import map_metrics
from medood.benchmark.page import host_sentence, results_markdown, seed_claims
from medood.benchmark.plots import histogram_png, map_png, roc_png
from medood.benchmark.real import manifest_from_folders, real_manifest
from medood.benchmark.report import SCORES_FILE, task_results, write_json, write_scores_table
from medood.benchmark.runner import TASKS, run_task
from medood.data.demo.bench import MANIFEST, build_bench, read_manifest
from medood.data.errors import DataError
from medood.utils.io import atomic_write_bytes, atomic_write_text
from medood.utils.machine import describe_machine

__all__ = ["TASKS", "manifest_from_folders", "real_manifest", "run_benchmark"]

logger = logging.getLogger(__name__)


def _manifest(task: str, data: Path, real_dir: Path | None, quick: bool) -> dict[str, Any]:
    """The bench manifest of ``task``, or (``real_dir`` given) the real dataset's (:mod:`medood.benchmark.real`)."""
    folder = data / TASKS[task].folder
    if real_dir is not None:
        return real_manifest(folder, real_dir / TASKS[task].folder, quick)
    if (folder / MANIFEST).is_file():
        return read_manifest(folder)
    raise FileNotFoundError(f"{folder}: no {MANIFEST} (build the bench sets with 'medood data bench')")


def _plots(task: str, res: dict[str, Any], scores: dict[str, Any], runs: dict[str, Any], docs: Path) -> list[str]:

    plots = []
    rel = Path("results_plots") / task
    best = sorted(res["mean_auroc"], key=lambda d: -res["mean_auroc"][d])
    shown = list(dict.fromkeys([*res["seed_methods"], *best[:4]]))
    shown = [d for d in shown if d in res["mean_auroc"]]
    for s in res["sets"]:
        curves = {f"{d} ({100 * res['sets'][s]['detectors'][d]['auroc']:.1f})":
                  (np.array(list(scores[d]["id_test"].values())), np.array(list(scores[d][s].values())))
                  for d in shown if s in scores[d]}  # fmt: skip
        plots.append(str(roc_png(docs / rel / f"roc_{s}.png", f"{task}: {s} (AUROC %)", curves).relative_to(docs)))
    for d in shown:
        ood = {s: np.array(list(scores[d][s].values())) for s in list(res["sets"])[:3] if s in scores[d]}
        path = histogram_png(
            docs / rel / f"hist_{d}.png", f"{task}: {d} scores", np.array(list(scores[d]["id_test"].values())), ood
        )
        plots.append(str(path.relative_to(docs)))
    for d, by_set in runs.items():  # example maps: the bundle's own overlay of the first case of the first OOD set
        for s in res["sets"]:
            found = sorted(Path(by_set[s]).glob("*_overlay.png")) if s in by_set else []
            if found:
                target = docs / rel / f"map_{d}_{s}.png"
                atomic_write_bytes(target, found[0].read_bytes())
                plots.append(str(target.relative_to(docs)))
                break
    return plots


def _segmentation(spec: Any, manifest: dict[str, Any], result: Any, docs: Path, n_boot: int) -> dict[str, Any]:
    import nibabel as nib

    seg = manifest["segmentation"]
    root = Path(manifest["sets"]["id_test"]["dir"]).parent
    out: dict[str, Any] = {"n_id": None, "sets": {}, "maps": {}, "seed_methods": list(spec.seeds), "plots": []}
    for det in spec.bundles:
        runs = result.runs[det]
        m = map_metrics(None, runs["seg_test"], root / seg["dir"], root / seg["masks"], n_boot=n_boot)
        out["maps"][det] = m
        case = sorted(Path(runs["seg_test"]).glob("*_anomaly_map.nii.gz"))[0]
        stem = case.name.replace("_T1w_anomaly_map.nii.gz", "")
        amap = np.asarray(nib.load(str(case)).get_fdata())  # type: ignore[attr-defined]
        mask = np.asarray(nib.load(str(root / seg["masks"] / f"{stem}_lesion.nii.gz")).get_fdata())  # type: ignore[attr-defined]
        image = np.asarray(nib.load(str(root / seg["dir"] / f"{stem}_T1w.nii.gz")).get_fdata())  # type: ignore[attr-defined]
        k = int(np.argmax(mask.sum((0, 1)))) if mask.any() else amap.shape[2] // 2
        thr = m["map_threshold"]
        path = map_png(docs / "results_plots" / spec.name / f"map_{det}.png", image[..., k], amap[..., k],
                       (thr, 4 * thr), mask[..., k] > 0)  # fmt: skip
        out["plots"].append(str(path.relative_to(docs)))
        out["detectors"] = {det: {**result.cost[det], "flagged_id_rate": None, "alpha": None}}
    return out


def run_benchmark(
    docs: Path,
    work: Path,
    data: Path | None = None,
    only: list[str] | None = None,
    quick: bool = True,
    alpha: float = 0.05,
    command: str = "python scripts/benchmark.py --quick",
    epochs: int | None = None,
    bundles: bool = True,
) -> dict[str, Any]:
    """Run the benchmark and write ``docs/results.json``, ``results.md``, ``results_scores.csv.gz`` and plots.

    Args:
        docs: the output folder (``docs/``).
        work: bench sets (when ``data`` is not given), bundle runs and trained hosts.
        data: a folder of real datasets, ``DIR/<task folder>/`` in a layout of :mod:`medood.benchmark.real`
            (MedMNIST ``.npz``, ISIC 2019 / HAM10000, Kvasir-v2 / GastroVision class folders, IXI + BraTS NIfTI,
            sorted class folders, or a bench ``manifest.json``); materialised under ``work/real/<hash of DIR>/``.
        only: tasks (default: every task of :data:`~medood.benchmark.runner.TASKS`).
        quick: fewer bootstrap resamples (300 vs 1000), fewer shift images, 10 vs 30 host epochs.
        alpha: the false-alarm rate of the flags.
        command: recorded on the page.
        epochs: host training epochs (default: 10 with ``quick``, else 30).
        bundles: run the seed-method bundles too (``False``: the post-hoc family only, e.g. for a smoke test).
    """
    start = time.perf_counter()
    machine = describe_machine()
    tasks = list(only or TASKS)
    n_boot, default_epochs = (300, 10) if quick else (1000, 30)
    epochs = epochs or default_epochs
    real_dir, runs = None, work / "runs"
    if data is None:
        data = work / "bench"
        build_bench(data, only=tasks, quick=quick)
    else:  # real datasets: their own folders, so bench runs and hosts are never reused for them
        key = hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:10]
        real_dir = work / "real" / key
        runs = real_dir / "runs"
    payload: dict[str, Any] = {"machine": machine, "command": command, "alpha": alpha, "n_boot": n_boot,
                               "tasks": {}, "not_done": []}  # fmt: skip
    rows: list[tuple[str, str, str, str, float]] = []
    for task in tasks:
        spec = TASKS[task] if bundles else dataclasses.replace(TASKS[task], bundles={})
        if quick and spec.full_only:
            payload["not_done"].append(f"{task}: runs with --full only (too slow for the quick page on 2 CPU cores)")
            continue
        try:
            manifest = _manifest(task, data, real_dir, quick)
        except (FileNotFoundError, DataError) as err:  # one line naming the folder / file and what was expected
            logger.error("benchmark %s: %s", task, err)
            payload["not_done"].append(f"{task}: {err}")
            continue
        if manifest.get("protocol"):
            payload.setdefault("data", {})[task] = {k: manifest.get(k) for k in ("source", "layout", "protocol")}
        t0 = time.perf_counter()
        try:  # one task failing leaves the others on the page (and says why)
            result = run_task(spec, manifest, runs, epochs, quick)
            if spec.segmentation:
                res = _segmentation(spec, manifest, result, docs, n_boot)
            else:
                res = task_results(manifest, result.scores, result.cost, spec.seeds, alpha, n_boot,
                                   same_host=result.same_host)  # fmt: skip
                res["hosts"] = {seed: family["host"] for seed, family in result.same_host.items()}
                res["host"] = host_sentence(result.host, result.same_host)
                res["plots"] = _plots(task, res, result.scores, result.runs, docs)
        except Exception as err:  # reported on the page; the run goes on
            logger.exception("benchmark %s failed", task)
            payload["not_done"].append(f"{task}: failed: {type(err).__name__}: {err}")
            continue
        for det, by_set in result.scores.items():
            rows += [(task, s, det, c, v) for s, cases in by_set.items() for c, v in cases.items()]
        res["seconds"] = time.perf_counter() - t0
        payload["tasks"][task] = res
        logger.info("benchmark %s done in %.0f s", task, res["seconds"])
    mim_ref = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "mim.json"
    import json

    payload["seeds"] = seed_claims(payload["tasks"], json.loads(mim_ref.read_text()) if mim_ref.is_file() else None)
    payload["seconds"] = time.perf_counter() - start
    docs.mkdir(parents=True, exist_ok=True)
    write_scores_table(docs / SCORES_FILE, rows)
    write_json(docs / "results.json", payload)

    atomic_write_text(docs / "results.md", results_markdown(payload))
    logger.info("benchmark written to %s in %.1f min", docs, payload["seconds"] / 60)
    return payload
