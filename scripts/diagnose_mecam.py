"""Diagnose MECAM per stage on VALIDATION data only and choose a scoring fix by a rule fixed beforehand (issue 23).

For each task the MECAM bundle's shipped detector (``models/model.pt``) and its preprocessing score the bench ID
validation images (``id_val``) against the validation OOD family (``ood_val``: ``val_shuffle``, ``val_spike``,
corruptions) and a cross-task proxy for far-OOD: the ``id_val`` images of the other 2-D bench tasks (never a test
OOD kind of the task, never in its training folder). No test OOD kind and no ID test image is read.
Figures: :mod:`medood.benchmark.mecam_diagnosis`; the rule: its ``RULE``; the page:
:mod:`medood.benchmark.mecam_diagnosis_page` (every sentence from the JSON).

Usage::

    PYTHONPATH=. .venv/bin/python scripts/diagnose_mecam.py --bench-dir /tmp/mbfull/bench --threads 1 \
        [--tasks dermoscopy pathology]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medood.benchmark.bundles import bundle_parser, collect_scores, item_loader, load_network
from medood.benchmark.mecam_diagnosis import image_figures, select, set_table
from medood.benchmark.mecam_diagnosis_page import markdown
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.data.demo.bench import read_manifest
from medood.data.folders import class_folder_datalist, scoring_datalist

log = logging.getLogger("diagnose_mecam")
ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"dermoscopy": "mecam_dermoscopy_ood_classification", "pathology": "mecam_pathology_ood_classification"}
CROSS = {"dermoscopy": ("pathology", "endoscopy"), "pathology": ("dermoscopy", "endoscopy")}


def validation_sets(bench: Path, task: str, class_names: list[str]) -> tuple[dict[str, list[Any]], np.ndarray]:
    """``({set: items}, id_val labels)``: ``id_val``, the ``ood_val`` sets, then ``cross_<task>`` sets."""
    sets = read_manifest(bench / task)["sets"]
    items = class_folder_datalist(sets["id_val"]["dir"], None, class_names)[0]
    out: dict[str, list[Any]] = {"id_val": items}
    out.update({k: scoring_datalist(s["dir"], None) for k, s in sets.items() if s["role"] == "ood_val"})
    for other in CROSS[task]:
        out[f"cross_{other}"] = scoring_datalist(read_manifest(bench / other)["sets"]["id_val"]["dir"], None)
    return out, np.array([d["label"] for d in items])


def run_task(task: str, bench: Path, n_boot: int) -> dict[str, Any]:
    """Every figure of one task and the rule's choice."""
    bundle = ROOT / "bundles" / BUNDLES[task]
    parser = bundle_parser(bundle, ["inference.yaml"], device=torch.device("cpu"))
    det = load_network(parser, "network_def", bundle / "models" / "model.pt")
    pre = parser.get_parsed_content("preprocessing")
    sets, labels = validation_sets(bench, task, list(parser["class_names"]))
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    fig = {}
    for name, items in sets.items():
        got = collect_scores(item_loader(items, pre, 64, keys=["image"]), lambda x: image_figures(det, x, gen))
        fig[name] = {k: v.numpy() for k, v in got.items()}
        log.info("%s %s: %d images", task, name, len(items))
    seconds = time.perf_counter() - t0
    return {
        "bundle": f"bundles/{BUNDLES[task]}",
        "exits": list(det.exits),
        "n": {k: len(v) for k, v in sets.items()},
        "corruption_sets": [k for k in sets if k.startswith("val_")],
        "cross_sets": [k for k in sets if k.startswith("cross_")],
        "id_val_accuracy": float(np.mean(fig["id_val"]["pred"] == labels)),
        "figures": set_table(fig, "id_val"),
        "selection": select(fig, "id_val", n_boot),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, ROOT / "docs" / "benchmarks" / "mecam_diagnosis.json", threads=1)
    p.add_argument("--bench-dir", type=Path, default=Path("/tmp/mbfull/bench"), help="bench sets (medood data bench)")
    p.add_argument("--tasks", nargs="*", default=list(BUNDLES))
    p.add_argument("--n-boot", type=int, default=1000)
    args = p.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    res: dict[str, Any] = {**bench_header(conventions=False), "n_boot": args.n_boot, "tasks": {}}
    for task in args.tasks:
        res["tasks"][task] = run_task(task, args.bench_dir, args.n_boot)
    write_page(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
