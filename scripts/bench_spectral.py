"""Benchmark spectral signatures against Mahalanobis, entropy and MC dropout on the multi-task host; guard overhead.

Writes ``docs/benchmarks/spectral.json`` and ``spectral.md`` (``--out``):

* ``tasks``: ``{task: {ood_set: {detector: {auroc, fpr95, aupr_in, aupr_out}}}}`` for the brain tasks (one per
  contrast: that contrast's ID test volumes against each OOD kind) and the pathology task (ID test patches against
  each ``ood_near`` / ``ood_far`` folder). Host: the shipped multi-task network of
  ``bundles/spectral_brain_mri_ood_classification``. Feature detectors are fitted per domain on the host's training
  data (brain: every training volume at every contrast; pathology: the training patches); nothing is tuned on OOD
  data. The brain OOD kinds are the demo's 7 volumes plus ``--extra-ood`` more per kind (generated here with the
  demo's own OOD builders, seeds ``(seed, 6, i)``; ``ct_head`` is deterministic, one volume). A slot that is normal
  after preprocessing (:func:`medood.data.demo.ood.ood_contrasts`: ``wrong_contrast_pd`` / ``inverted_t1w``
  outside T1w, and ``reoriented_pir`` everywhere, since the preprocessing reorients every volume to RAS) is not an
  OOD case of that contrast's task. Legacy: ``scripts/benchmark.py`` (docs/results.md) is the one protocol.
* ``guard_overhead``: the host as a plain segmentation bundle (the bundle's inference config without the OOD
  handler) against its ``medood guard`` companion on the same ID test volumes (T1w), ``--repeats`` alternating
  runs in this process; ratio of the median ``evaluator.run()`` times (``guard_overhead_end_to_end``: one whole
  ``monai.bundle run`` process each, imports included). The companion's scores are compared with the spectral
  scores computed here, and its segmentation files with the plain bundle's.

Usage::

    .venv/bin/python scripts/bench_spectral.py --brain-dir demo_data/brain_mri --pathology-dir demo_data/pathology
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from medood.benchmark.bundles import bundle_network, timed_process_run, timed_workflow_run
from medood.benchmark.features import recorded_forward
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.benchmark.tables import md_table
from medood.data.demo.brain import load_template
from medood.data.demo.brain_set import save_nifti
from medood.data.demo.ood import BRAIN_OOD_KINDS, ID_AFTER_PREPROCESSING, make_brain_ood, ood_contrasts
from medood.data.multitask import (
    BRAIN_CONTRASTS,
    brain_datalist,
    brain_transforms,
    image_folder_datalist,
    pathology_datalist,
    pathology_transforms,
)
from medood.detectors.base_featuremap import FeatureMapDetector
from medood.detectors.feature_mahalanobis import FeatureMahalanobisDetector
from medood.detectors.mc_dropout import MCDropoutDetector
from medood.detectors.posthoc import begin_fit, end_fit, fit_batch, score_batch
from medood.detectors.seg_entropy import SegEntropyDetector
from medood.detectors.spectral import SpectralDetector
from medood.engines.guard import build_guard
from medood.metrics.ood_sets import METRICS, markdown_table, read_scores_csv, task_tables
from medood.networks.feature_maps import FeatureRecorder, encoder_stages
from medood.utils.io import atomic_write_text, case_name

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "spectral_brain_mri_ood_classification"
log = logging.getLogger("bench_spectral")


def extra_ood(brain_dir: Path, work: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """The demo's OOD entries plus ``n`` more per kind (``ct_head``: the demo's only), absolute paths."""
    demo = json.loads((brain_dir / "dataset.json").read_text())
    entries = [{**e, **{c: str(brain_dir / e[c]) for c in BRAIN_CONTRASTS}} for e in demo["ood"]]
    template = load_template("small" if demo["spacing_mm"][0] == 2.0 else "full")
    for kind in (k for k in BRAIN_OOD_KINDS if k not in ID_AFTER_PREPROCESSING):
        for i in range(n if kind != "ct_head" else 0):
            subject, _ = make_brain_ood(kind, template, (seed, 6, i))
            entry: dict[str, Any] = {"case": f"extra-{i:02d}_{kind}", "ood_type": kind}
            for c in BRAIN_CONTRASTS:
                path = work / "extra_ood" / f"{entry['case']}_{c}.nii.gz"
                if not path.exists():
                    save_nifti(
                        path, subject.images[c], subject.affine, kind="hu" if "ct" in subject.params else "image"
                    )
                entry[c] = str(path)
            entries.append(entry)
    return entries


def brain_items(brain_dir: Path, work: Path, n_extra: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """fit / eval items; eval items carry ``task`` and ``set``."""
    js = brain_dir / "dataset.json"
    fit = brain_datalist(js, "training", label_key=None)
    evals = [{**it, "set": "id"} for it in brain_datalist(js, "test", label_key=None)]
    for e in extra_ood(brain_dir, work, n_extra, seed):
        for c in ood_contrasts(e["ood_type"], BRAIN_CONTRASTS):  # reoriented_pir: ID after preprocessing, no slot
            evals.append({"image": e[c], "task": f"brain_{c}", "set": e["ood_type"], "case": case_name(e[c])})
    return {"fit": fit, "eval": evals}


def pathology_items(root: Path) -> dict[str, list[dict[str, Any]]]:
    evals = [{**it, "set": "id"} for it in pathology_datalist(root, "test")]
    for group in ("ood_near", "ood_far"):
        for folder in sorted(p for p in (root / group).iterdir() if p.is_dir()):
            evals += [{**it, "set": f"{group}/{folder.name}"} for it in image_folder_datalist(folder)]
    return {"fit": pathology_datalist(root, "train"), "eval": evals}


def feature_detectors(layers: Sequence[str]) -> dict[str, FeatureMapDetector]:
    deep = [layers[-1]]
    return {
        "spectral": SpectralDetector(layers=layers),
        "spectral_bottleneck": SpectralDetector(layers=deep),
        "spectral_normalized": SpectralDetector(layers=layers, combine="normalized"),
        "mahalanobis_pool": FeatureMahalanobisDetector(layers=layers),
        "mahalanobis_pool_bottleneck": FeatureMahalanobisDetector(layers=deep),
        "seg_entropy": SegEntropyDetector(region="foreground"),
        "seg_entropy_volume": SegEntropyDetector(region="volume"),
    }


def fit_detectors(
    net: nn.Module, recorder: FeatureRecorder, transform: Callable, items: list[dict], dets: dict
) -> None:
    """Stream the fit cases through every detector that needs fitting (one forward each)."""
    start = time.perf_counter()
    begin_fit(dets)
    for item in items:
        fit_batch(dets, recorded_forward(net, recorder, transform, item)[1], None)
    end_fit(dets)
    log.info("fitted on %d cases in %.0f s", len(items), time.perf_counter() - start)


def context_accuracy(det: SpectralDetector, tasks: Sequence[str]) -> float | None:
    """Leave-one-out 1-NN accuracy of the task (context) of each training signature: are contexts distinct?"""
    if len(set(tasks)) < 2 or det.banks[0].shape[0] != len(tasks):
        return None
    d = torch.stack([torch.cdist(b, b) for b in det.banks]).mean(0)
    d.fill_diagonal_(float("inf"))
    nearest = d.argmin(1).tolist()
    return sum(tasks[j] == t for j, t in zip(nearest, tasks)) / len(tasks)


def score_domain(net: nn.Module, items: dict, transform: Callable, mc_samples: int) -> tuple[dict, float | None]:
    """Fit the feature detectors on ``items["fit"]``, score ``items["eval"]`` (one forward each, plus the
    MC-dropout passes). Returns ``({detector: {case key: score}}, context accuracy of the spectral signatures)``."""
    layers = encoder_stages(net, 2)
    dets = feature_detectors(layers)
    recorder = FeatureRecorder(net, {name: name for name in [*layers, ""]})
    fit_detectors(net, recorder, transform, items["fit"], dets)
    spectral = dets["spectral"]
    assert isinstance(spectral, SpectralDetector)
    accuracy = context_accuracy(spectral, [it["task"] for it in items["fit"]])
    mc = MCDropoutDetector(model=net, n_samples=mc_samples, region="foreground")
    scores: dict[str, dict[str, float]] = {name: {} for name in [*dets, "mc_dropout"]}
    for i, item in enumerate(items["eval"]):
        x, feats = recorded_forward(net, recorder, transform, item)
        key = f"{item['task']}/{item['set']}/{item['case']}"
        for name, v in score_batch(dets, feats).items():
            scores[name][key] = float(v[0])
        scores["mc_dropout"][key] = float(mc.score(x).image_score[0])
        if i % 50 == 0:
            log.info("scored %d / %d", i + 1, len(items["eval"]))
    recorder.remove()
    return scores, accuracy


def limited(items: dict[str, list[dict]], n: int | None) -> dict[str, list[dict]]:
    """At most ``n`` fit items and ``n`` eval items per task and set (a quick smoke run of the script)."""
    if n is None:
        return items
    counts: dict[tuple[str, str], int] = {}
    evals = []
    for it in items["eval"]:
        key = (it["task"], it["set"])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= n:
            evals.append(it)
    return {"fit": items["fit"][: max(n, 3)], "eval": evals}


def case_sets(items: Sequence[dict]) -> dict[str, tuple[str, str]]:
    return {f"{it['task']}/{it['set']}/{it['case']}": (it["task"], it["set"]) for it in items}


def host_bundle(work: Path) -> Path:
    """The host as a plain segmentation bundle: the bundle's inference config without the OOD detector."""
    out = work / "host_bundle"
    config = ConfigParser.load_config_file(str(BUNDLE / "configs" / "inference.yaml"))
    config["handlers"] = [{"_target_": "StatsHandler", "iteration_log": False}]
    config["initialize"] = [
        "$monai.utils.set_determinism(seed=@seed)",
        "$medood.utils.load_state(@network, @ckpt_path)",
    ]
    for key in ("detector_def", "detector", "detector_path", "ood_layers", "false_alarm_rate"):
        config.pop(key, None)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    atomic_write_text(out / "configs" / "inference.json", json.dumps(config, indent=2) + "\n")
    for name in ("logging.conf", "metadata.json"):
        shutil.copyfile(BUNDLE / "configs" / name, out / "configs" / name)
    shutil.copyfile(BUNDLE / "models" / "model.pt", out / "models" / "model.pt")
    return out


def guard_overhead(
    brain_dir: Path, work: Path, repeats: int, own_scores: dict[str, float], limit: int | None = None
) -> dict[str, Any]:
    plain = host_bundle(work)
    id_list = work / "id_list.json"
    js = brain_dir / "dataset.json"
    atomic_write_text(id_list, json.dumps({
        "training": [{"image": it["image"]} for it in brain_datalist(js, "training", label_key=None)][:limit],
        "validation": [{"image": it["image"]} for it in brain_datalist(js, "validation", label_key=None)][:limit],
    }))  # fmt: skip
    start = time.perf_counter()
    # overhead only: the demo's few validation volumes cannot give a 5 % split-conformal threshold (a warning)
    companion = build_guard(plain, id_list, work / "guarded_bundle", allow_small_calibration=True)
    guard_fit_seconds = time.perf_counter() - start
    runs: dict[str, list[float]] = {"plain": [], "guard": []}
    procs: dict[str, list[float]] = {"plain": [], "guard": []}
    configs = {"plain": plain / "configs" / "inference.json", "guard": companion / "configs" / "inference.json"}
    for r in range(repeats):
        for name, cfg in configs.items():
            out = work / f"overhead_{name}"
            overrides: dict[str, Any] = {"dataset_dir": str(brain_dir), "datalist_key": "test", "output_dir": str(out)}
            if name == "plain":
                overrides["bundle_root"] = str(plain)
            runs[name].append(timed_workflow_run(cfg, {**overrides, "contrasts": ["T1w"]}))
            if r == 0:
                procs[name].append(timed_process_run(cfg, {**overrides, "contrasts": "['T1w']"}, ROOT))
            log.info("overhead run %d %s: %.1f s in process", r, name, runs[name][-1])
    guarded = read_scores_csv(work / "overhead_guard" / "scores.csv")
    diffs = [abs(guarded[c] - own_scores[c]) for c in guarded if c in own_scores]
    identical = all(
        (work / "overhead_plain" / p.name).read_bytes() == p.read_bytes()
        for p in (work / "overhead_guard").glob("*_seg.nii.gz")
    )
    return {
        "guard_overhead": statistics.median(runs["guard"]) / statistics.median(runs["plain"]),
        "guard_overhead_end_to_end": statistics.median(procs["guard"]) / statistics.median(procs["plain"]),
        "run_seconds": runs, "process_seconds": procs, "n_volumes": len(guarded),
        "guard_fit_seconds": guard_fit_seconds, "max_score_difference_to_benchmark": max(diffs) if diffs else None,
        "segmentations_byte_identical": identical,
    }  # fmt: skip


UNCERTAINTY = ("seg_entropy", "seg_entropy_volume", "mc_dropout")


def protocol_tables(tasks: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The tables without the sets the one protocol never scores as OOD (``ID_AFTER_PREPROCESSING``; a JSON written
    before that definition has them), and the names dropped."""
    dropped = sorted({s for t in tasks.values() for s in t if s in ID_AFTER_PREPROCESSING})
    kept = {task: {s: v for s, v in t.items() if s not in ID_AFTER_PREPROCESSING} for task, t in tasks.items()}
    return {task: t for task, t in kept.items() if t}, dropped


def mean_auroc(tasks: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {detector: mean AUROC over the task's OOD sets}}``."""
    return {
        task: {d: statistics.fmean(t[s][d]["auroc"] for s in t) for d in next(iter(t.values()))}
        for task, t in tasks.items()
    }


def standing(tasks: dict[str, Any]) -> list[str]:
    """Generated sentences: per task, spectral against the uncertainty scores and pooled Mahalanobis (mean AUROC),
    and the OOD kinds where spectral is not above every uncertainty score (the paper's claim)."""
    means, lines = mean_auroc(tasks), []
    for task, m in means.items():
        unc = {d: m[d] for d in UNCERTAINTY if d in m}
        ahead = [d for d in unc if m["spectral"] > unc[d]]
        not_above = [
            s for s, row in tasks[task].items() if any(row[d]["auroc"] >= row["spectral"]["auroc"] for d in unc)
        ]
        lines.append(
            f"- {task}: spectral {m['spectral']:.3f}; ahead of {len(ahead)} of {len(unc)} uncertainty scores by mean "
            "AUROC (" + ", ".join(f"{d} {v:.3f}" for d, v in unc.items()) + f"); pooled Mahalanobis "
            f"{m['mahalanobis_pool']:.3f} ({'behind' if m['spectral'] < m['mahalanobis_pool'] else 'level or ahead'})"
            f"; OOD kinds where an uncertainty score is level with (e.g. both 1.000) or ahead of spectral: "
            f"{', '.join(not_above) or 'none'}."
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The page; every sentence is generated from ``result`` (the JSON this script writes)."""
    ov = result["overhead"]
    tasks, dropped = protocol_tables(result["tasks"])
    means = mean_auroc(tasks)
    dets = sorted(next(iter(means.values())))
    lines = [
        "# Spectral signatures vs Mahalanobis, entropy and MC dropout (multi-task host)",
        "",
        f"Machine: {result['machine']}. Produced by `scripts/bench_spectral.py` in {result['seconds']:.0f} s.",
        "Higher score = more OOD; OOD is the positive class; FPR95 = fraction of OOD accepted at 95 % ID TPR.",
        "Legacy per-method page: the comparison of every method on the benchmark sets, with intervals, is "
        "`docs/results.md` (`scripts/benchmark.py`).",
        "",
        f"Guard overhead (companion / plain segmentation bundle, median evaluator run on {ov['n_volumes']} ID test "
        f"volumes): **{result['guard_overhead']:.3f}x** ({ov['guard_overhead_end_to_end']:.3f}x for whole "
        "`monai.bundle run` processes).",
        "",
        "Spectral signatures identify the contrast of a brain training volume (leave-one-out nearest neighbour, "
        f"chance 1/3): {result['spectral_contrast_identification']['loo_1nn_accuracy']}.",
        "",
        "Cases per set: "
        + json.dumps({t: {k: n for k, n in v.items() if k not in dropped} for t, v in result["set_sizes"].items()}),
    ]
    if dropped:
        lines += [
            "",
            f"Not OOD after preprocessing, left out of every table and mean here: {', '.join(dropped)} "
            "(`medood.data.demo.ood.ID_AFTER_PREPROCESSING`; this JSON was written before that definition).",
        ]
    lines += [
        "",
        "## Mean AUROC per task",
        "",
        *md_table(["task", *dets], ([t, *(f"{m[d]:.3f}" for d in dets)] for t, m in means.items())),
        "",
        *standing(tasks),
        "",
    ]
    for metric in METRICS:
        lines += [f"## {metric}", "", markdown_table(tasks, metric)]
    return "\n".join(lines)


def main() -> None:
    # runs repeat into their own output folders (medood.io.run_folder): a rerun replaces the last one;
    # set here, not at import, so importing this script (tests) leaves the environment alone
    os.environ.setdefault("MEDOOD_RUN_MODE", "overwrite")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p, ROOT / "docs" / "benchmarks" / "spectral.json", threads=2)
    p.add_argument("--brain-dir", type=Path, default=ROOT / "demo_data" / "brain_mri")
    p.add_argument("--pathology-dir", type=Path, default=ROOT / "demo_data" / "pathology")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench_spectral")
    p.add_argument("--extra-ood", type=int, default=2, help="generated OOD volumes per kind (besides the demo's)")
    p.add_argument("--mc-samples", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3, help="alternating overhead runs per bundle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="smoke run: at most this many cases per list and set")
    args = p.parse_args()
    if render_only(args, markdown):
        return
    start(args, args.seed)
    header, t0 = bench_header(conventions=False), time.perf_counter()
    net, parser = bundle_network(BUNDLE)
    pixdim, fov = parser.get_parsed_content("pixdim"), parser.get_parsed_content("fov")
    brain = limited(brain_items(args.brain_dir, args.work, args.extra_ood, args.seed), args.limit)
    patho = limited(pathology_items(args.pathology_dir), args.limit)
    scores, contrast_accuracy = score_domain(net, brain, brain_transforms(False, pixdim, fov), args.mc_samples)
    patho_scores, _ = score_domain(net, patho, pathology_transforms(False), args.mc_samples)
    for name, s in patho_scores.items():
        scores[name].update(s)
    sets = case_sets(brain["eval"] + patho["eval"])
    tasks = task_tables(scores, sets)
    own = {
        key.rsplit("/", 1)[-1]: v for key, v in scores["spectral"].items() if "/id/" in key and key.startswith("brain")
    }
    overhead = guard_overhead(args.brain_dir, args.work, args.repeats, own, args.limit and max(args.limit, 3))
    sizes: dict[str, dict[str, int]] = {}
    for task, s in sets.values():
        sizes.setdefault(task, {}).setdefault(s, 0)
        sizes[task][s] += 1
    result = {
        **header,
        "guard_overhead": overhead["guard_overhead"],
        "tasks": tasks,
        "overhead": overhead,
        "set_sizes": sizes,
        "spectral_contrast_identification": {
            "loo_1nn_accuracy": contrast_accuracy,
            "what": "leave-one-out nearest-neighbour contrast (T1w / T2w / FLAIR) of each brain training volume's "
            "spectral signature (mean distance over the two layers): 1/3 = chance",
        },
        "detectors": {
            "spectral": "2 deepest encoder stages (downsamples.1, bottleneck), min distance, mean over layers",
            "spectral_bottleneck": "bottleneck only, min distance",
            "spectral_normalized": "2 stages, per-layer normalised by leave-one-out training distances",
            "mahalanobis_pool": "global-average-pooled 2 stages, one Gaussian each, mean of squared distances",
            "mahalanobis_pool_bottleneck": "bottleneck only",
            "seg_entropy": "mean softmax entropy over the predicted foreground",
            "seg_entropy_volume": "mean softmax entropy over the whole input",
            "mc_dropout": f"mean predictive variance over the predicted foreground, {args.mc_samples} passes",
        },
        "seconds": time.perf_counter() - t0,
    }
    write_page(args.out, result, markdown(result))
    print(markdown_table(tasks, "auroc"))
    print(f"guard overhead {overhead['guard_overhead']:.3f}x")


if __name__ == "__main__":
    main()
