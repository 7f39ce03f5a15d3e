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
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.benchmark.spectral_host import feature_detectors, feature_notes, fit_and_score
from medood.benchmark.spectral_page import markdown
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
from medood.detectors.mc_dropout import MCDropoutDetector
from medood.detectors.spectral import SpectralDetector
from medood.engines.guard import build_guard
from medood.metrics.ood_sets import markdown_table, read_scores_csv, task_tables
from medood.networks.feature_maps import encoder_stages
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


def context_accuracy(det: SpectralDetector, tasks: Sequence[str]) -> float | None:
    """Leave-one-out 1-NN accuracy of the task (context) of each training signature: are contexts distinct?"""
    if len(set(tasks)) < 2 or det.banks[0].shape[0] != len(tasks):
        return None
    d = torch.stack([torch.cdist(b, b) for b in det.banks]).mean(0)
    d.fill_diagonal_(float("inf"))
    nearest = d.argmin(1).tolist()
    return sum(tasks[j] == t for j, t in zip(nearest, tasks)) / len(tasks)


def _key(item: dict) -> str:
    return f"{item['task']}/{item['set']}/{item['case']}"


def score_domain(net: nn.Module, items: dict, transform: Callable, mc_samples: int) -> tuple[dict, float | None]:
    """Fit the feature detectors on ``items["fit"]``, score ``items["eval"]`` (one forward each, plus the
    MC-dropout passes). Returns ``({detector: {case key: score}}, context accuracy of the spectral signatures)``."""
    layers = encoder_stages(net, 2)
    dets = feature_detectors(layers)
    mc = MCDropoutDetector(model=net, n_samples=mc_samples, region="foreground")
    scores = fit_and_score(net, layers, transform, items, dets, mc, _key)[0]
    spectral = dets["spectral"]
    assert isinstance(spectral, SpectralDetector)
    return scores, context_accuracy(spectral, [it["task"] for it in items["fit"]])


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
        "detectors": feature_notes(args.mc_samples),
        "seconds": time.perf_counter() - t0,
    }
    write_page(args.out, result, markdown(result))
    print(markdown_table(tasks, "auroc"))
    print(f"guard overhead {overhead['guard_overhead']:.3f}x")


if __name__ == "__main__":
    main()
