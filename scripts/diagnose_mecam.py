"""Diagnose MECAM per stage on VALIDATION data only and choose a scoring fix by a rule fixed beforehand (issue 23).

For each task the MECAM bundle's shipped weights (``models/model.pt``) and preprocessing, scored with the paper's
setting (all four exits, MSE: the setting every bundle shipped before this diagnosis; the bundle's ``cam_grid``),
score the bench ID validation images (``id_val``) against the validation OOD family (``ood_val``: corruptions) and,
for the 2-D tasks, a cross-task proxy for far-OOD: the ``id_val`` images of the other 2-D bench tasks (never a test
OOD kind of the task, never in its training folder; none for the brain MRI volumes). No test OOD kind and no ID
test image is read.
Figures: :mod:`medood.benchmark.mecam_diagnosis`; the rule: its ``RULE``; the page:
:mod:`medood.benchmark.mecam_diagnosis_page` (every sentence from the JSON).

Usage::

    PYTHONPATH=. .venv/bin/python scripts/diagnose_mecam.py --bench-dir /tmp/mbfull/bench --threads 1 \
        [--tasks dermoscopy pathology brain_mri]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medood.benchmark.bundles import bundle_parser, collect_scores, item_loader, load_network
from medood.benchmark.mecam_diagnosis import image_figures, select, set_table
from medood.benchmark.mecam_diagnosis_page import markdown, write_figures
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.data.datalist import nifti_datalist
from medood.data.demo.bench import read_manifest
from medood.data.folders import class_folder_datalist, scoring_datalist

log = logging.getLogger("diagnose_mecam")
ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"dermoscopy": "mecam_dermoscopy_ood_classification", "pathology": "mecam_pathology_ood_classification",
           "brain_mri": "mecam_brain_mri_ood_classification"}  # fmt: skip
#: the cross-task far-OOD proxy of each task (other 2-D tasks' id_val; none of the same kind for the 3-D volumes)
CROSS = {"dermoscopy": ("pathology", "endoscopy"), "pathology": ("dermoscopy", "endoscopy"), "brain_mri": ()}


def validation_sets(bench: Path, task: str, class_names: list[str]) -> tuple[dict[str, list[Any]], np.ndarray]:
    """``({set: items}, id_val labels)``: ``id_val``, the ``ood_val`` sets, then ``cross_<task>`` sets."""
    sets = read_manifest(bench / task)["sets"]
    if task == "brain_mri":  # sub-000_T1w.nii.gz: the contrast is the class
        items = [{**d, "label": class_names.index(Path(d["image"]).name.split("_")[-1].split(".")[0])}
                 for d in nifti_datalist(sets["id_val"]["dir"])]  # fmt: skip
    else:
        items = class_folder_datalist(sets["id_val"]["dir"], None, class_names)[0]
    listing = nifti_datalist if task == "brain_mri" else lambda d: scoring_datalist(d, None)
    out: dict[str, list[Any]] = {"id_val": items}
    out.update({k: listing(s["dir"]) for k, s in sets.items() if s["role"] == "ood_val"})
    for other in CROSS[task]:
        out[f"cross_{other}"] = scoring_datalist(read_manifest(bench / other)["sets"]["id_val"]["dir"], None)
    return out, np.array([d["label"] for d in items])


def run_task(task: str, bench: Path, n_boot: int) -> dict[str, Any]:
    """Every figure of one task and the rule's choice."""
    bundle = ROOT / "bundles" / BUNDLES[task]
    parser = bundle_parser(bundle, ["inference.yaml"], device=torch.device("cpu"))
    det = load_network(parser, "network_def", bundle / "models" / "model.pt")
    pre = parser.get_parsed_content("preprocessing")
    configured = {"exits": list(det.exits), "change": det.change, "cam_grid": det.cam_grid}
    det.exits, det.change = (0, 1, 2, 3), "mse"  # the diagnosed setting (the paper's); cam_grid stays the bundle's
    names = parser["contrasts"] if task == "brain_mri" else parser["class_names"]
    sets, labels = validation_sets(bench, task, list(names))
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    fig = {}
    for name, items in sets.items():
        loader = item_loader(items, pre, 4 if task == "brain_mri" else 64, keys=["image"])
        got = collect_scores(loader, lambda x: image_figures(det, x, gen))
        fig[name] = {k: v.numpy() for k, v in got.items()}
        log.info("%s %s: %d images", task, name, len(items))
    seconds = time.perf_counter() - t0
    return {
        "bundle": f"bundles/{BUNDLES[task]}",
        "bundle_setting": configured,
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
    if render_only(args, markdown):  # the page and the figures from the JSON
        write_figures(json.loads(args.out.read_text()), args.out.parent)
        return
    start(args)
    res: dict[str, Any] = {**bench_header(conventions=False), "n_boot": args.n_boot, "tasks": {}}
    for task in args.tasks:
        res["tasks"][task] = run_task(task, args.bench_dir, args.n_boot)
    write_page(args.out, res, markdown(res))
    write_figures(res, args.out.parent)


if __name__ == "__main__":
    main()
