"""Choose the MIM-OOD inference settings on VALIDATION data only (never the test set).

Scores the demo ``validation_lesion`` volumes (lesioned twins of the healthy validation subjects) and the healthy
``validation`` volumes in the bundle's 2 mm model space, for a grid of settings, and reports per setting every
figure a user sees: pixel AP and best Dice on the validation lesions, the Dice at the healthy ``map_percentile``
threshold, and the volume AUROC lesion-vs-healthy.

The expensive part (the networks) runs once per volume and flagging: the tokens, the in-painter's masked token
NLL and the token detector's probabilities are computed once; each flagging (``nll`` at a percentile of healthy
*training* token NLLs, optionally grown by hysteresis into a lower percentile, ``atd`` at a probability,
``union``; each with a mask dilation; decided by the detector's own ``flag_scores``) then costs one in-painting
pass and one decode. The post-processing (residual variant, min-/mean-pool kernels, volume reduction) is swept on
the cached raw residuals. Selection rule (``select``): among settings whose validation volume AUROC is within
``--auroc-slack`` of the best, the highest mean of pixel AP, best Dice and Dice at the healthy threshold.

    PYTHONPATH=. .venv/bin/python scripts/tune_mim_validation.py --ckpt W [--no-atd] [--out J]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import Dataset

from medood.benchmark.bundles import bundle_parser, load_network, model_space_transform
from medood.benchmark.mim_tuning import (
    NLL_GROUPS,
    NLL_PERCENTILES,
    SHIFTS,
    CachedTokens,
    acquisition_shift,
    check_on_shift,
    choose,
    flaggings,
    select,
    selection_text,
    stress_rows,
    sweep,
)
from medood.benchmark.mim_tuning_page import markdown, stress_markdown
from medood.benchmark.report import write_page
from medood.benchmark.stage_maps import percentile_table
from medood.data.datalist import bundle_datalist
from medood.utils.checkpoints import load_state
from medood.utils.io import atomic_write_text
from medood.utils.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation"
logger = logging.getLogger("tune_mim")


def load(dataset_dir: Path, parser: ConfigParser) -> tuple[list[dict], list[dict], list[dict]]:
    """Healthy training (for the NLL percentiles), healthy validation and lesioned validation volumes."""
    joint = model_space_transform(parser["pixdim"], parser["fov"], ["image"], ["label"])
    pre = parser.get_parsed_content("preprocessing")
    lesioned = list(Dataset(bundle_datalist(dataset_dir, "validation_lesion", keep=["label"]), joint))  # type: ignore[call-overload]
    healthy = list(Dataset(bundle_datalist(dataset_dir, "validation"), pre))  # type: ignore[call-overload]
    return healthy, lesioned, bundle_datalist(dataset_dir, "training")


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    """Write :func:`~medood.benchmark.mim_tuning_page.markdown` of the JSON report to ``path``."""
    atomic_write_text(path, markdown(report, path.with_suffix(".json").name))


def stress_report(net: Any, healthy: list, lesioned: list, map_pct: float, out: Path) -> None:
    """The shipped settings (the bundle's inference.yaml) under each acquisition stress
    (:func:`~medood.benchmark.mim_tuning.stress_rows`) -> ``out`` and its page."""
    rows = stress_rows(net, healthy, lesioned, map_pct)
    report = {"settings": {k: getattr(net, k) for k in ("flagging", "nll_percentile", "nll_grow_percentile",
              "nll_grow_steps", "residual", "minpool", "avgpool", "score_k")}, "machine": describe_machine(),
              "data": "the 8 healthy validation volumes and their 8 lesioned twins, each stress applied to all 16",
              "rows": rows}  # fmt: skip
    write_page(out, report, stress_markdown(report), indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset-dir", type=Path, default=ROOT / "demo_data" / "brain_mri")
    ap.add_argument("--ckpt", type=Path, default=BUNDLE / "models" / "model.pt")
    ap.add_argument("--no-atd", action="store_true", help="the token detector is untrained: nll flagging only")
    ap.add_argument("--nll-volumes", type=int, default=10, help="training volumes for the NLL percentiles")
    ap.add_argument("--auroc-slack", type=float, default=0.05)
    ap.add_argument("--candidates", type=int, default=8, help="best clean settings re-checked on shifted volumes")
    ap.add_argument(
        "--nll-groups", type=int, nargs="*", default=list(NLL_GROUPS), help="in-painter passes of the NLL flagging"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "mim_validation_tuning.json")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md next to --out from its JSON")
    ap.add_argument(
        "--stress", action="store_true", help="only the shipped settings under each stress (mim_validation_stress.*)"
    )
    ap.add_argument(
        "--reselect", action="store_true", help="apply the current selection rule to the shift-checked rows of --out"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.markdown_only or args.reselect:
        report = json.loads(args.out.read_text())
        if args.reselect:
            report["selected"] = choose(report["candidates_checked_on_shift"], args.auroc_slack)
            report["selection"] = selection_text(args.auroc_slack, len(report["candidates_checked_on_shift"]))
            atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
        write_markdown(args.out.with_suffix(".md"), report)
        return
    torch.manual_seed(0)
    start = time.perf_counter()
    parser = bundle_parser(BUNDLE, ["inference.yaml"])
    prefixes = ["tokenizer.", "inpainter."] + ([] if args.no_atd else ["token_detector."])
    net = load_network(parser, "network", args.ckpt, prefixes=prefixes)
    map_pct = float(parser["map_percentile"])
    healthy, lesioned, train = load(args.dataset_dir, parser)
    if args.stress:
        load_state(net, args.ckpt)  # the shipped settings need the fitted thresholds too
        stress_report(net, healthy, lesioned, map_pct, args.out.with_name("mim_validation_stress.json"))
        return
    pre = parser.get_parsed_content("preprocessing")
    groups = tuple(args.nll_groups)
    train_cached = [CachedTokens(net, pre(c)["image"], False, groups) for c in train[: args.nll_volumes]]
    nll_thr = {g: percentile_table(torch.cat([c.nll[g].flatten() for c in train_cached]), NLL_PERCENTILES)
               for g in groups}  # fmt: skip
    del train_cached
    logger.info("healthy training token NLL percentiles: %s", nll_thr)
    cases = [CachedTokens(net, d["image"], not args.no_atd, groups) for d in healthy + lesioned]
    results: list[dict[str, Any]] = []
    for flag in flaggings(groups, not args.no_atd):
        results += sweep(net, cases, healthy, lesioned, flag, nll_thr, map_pct)
    # the best clean settings again on shifted copies (one shift per subject, the same for its lesioned twin)
    shifted_h, shifted_l = ([{**d, "image": acquisition_shift(d["image"], SHIFTS[i % len(SHIFTS)], i)}
                             for i, d in enumerate(vols)] for vols in (healthy, lesioned))  # fmt: skip
    shifted_cases = [CachedTokens(net, d["image"], not args.no_atd, groups) for d in shifted_h + shifted_l]
    candidates = select(results, args.auroc_slack, args.candidates)
    checked = check_on_shift(net, candidates, shifted_cases, shifted_h, shifted_l, nll_thr, map_pct)
    chosen = choose(checked, args.auroc_slack)
    report = {
        "data": "demo validation_lesion (lesioned twins of the 8 validation subjects) + the 8 healthy validation "
        "volumes, 2 mm model space; the test set is not used. 'shifted': the same volumes with one acquisition "
        f"shift per subject ({', '.join(SHIFTS)}), re-normalised",
        "checkpoint": str(args.ckpt),
        "nll_thresholds": {f"groups {g}": {f"p{p:g}": v for p, v in t.items()} for g, t in nll_thr.items()},
        "nll_threshold_source": f"token NLLs of {min(args.nll_volumes, len(train))} healthy training volumes",
        "map_percentile": map_pct,
        "selection": selection_text(args.auroc_slack, args.candidates),
        "selected": chosen,
        "candidates_checked_on_shift": checked,
        "machine": describe_machine(),
        "seconds": time.perf_counter() - start,
        "results": sorted(results, key=lambda r: -r["pixel_ap"]),
    }
    write_page(args.out, report, markdown(report, args.out.name), indent=1)
    logger.info("selected: %s", chosen)


if __name__ == "__main__":
    main()
