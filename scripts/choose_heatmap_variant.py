"""Heatmap-OOD variants of the official code, trained on a bundle's data and scored on VALIDATION OOD only; a choice.

For each task (pathology, endoscopy: the 2-D heatmap bundles), on the bundle's own frozen classifier
(``models/classifier.pt``) and decoder training data (its ``train.yaml``: ID training images, corruptions of them,
the other-organ sample), every variant of :data:`medood.benchmark.heatmap_variants.VARIANTS` is trained with the
SAME epoch budget per decoder (``--epochs``), ``--seeds`` times (seeds 0..N-1: initialisation, corruptions,
training order; one training run is cheap in memory: the bundles' file pipeline is what costs minutes):

* ``default``: the bundle's detector (one decoder, images in [0, 1] in the loss);
* ``loss_range``: ``loss_input_range: [0, 1]``: the loss and its (1 + 5|t|) weight computed in [-1, 1] (official);
* ``multi_layer``: ``feature_layers: [layer3]``: the pooled ``layer3`` output joins ``z`` (pooled ``layer4``),
  the classifier's last two stages (the official ``fw_layers = 3`` feeds the same stages, unpooled, into its
  decoder);
* ``ensemble5``: ``n_decoders: 5`` (official): five decoders, maps averaged. Its decoder 0 is exactly the
  ``default`` decoder of the same seed (same initialisation, data and order; checked by
  ``tests/benchmark/test_heatmap_variants.py`` and on every validation case here), so the default is read from it.

Scored on the bench's ID validation images (``id_val``) against the VALIDATION OOD family only (``ood_val`` sets,
corruptions of ID validation images), never a test OOD kind. The validation family's corruptions (``shuffle``,
``spike``) are also among the bundles' auxiliary training corruptions: they are **held out of the decoder training
of every variant here** (otherwise the validation sets would be the training data's kind), so every variant trains
on the bundle's data less those two corruptions.

Rule, fixed before the measurement (:func:`medood.benchmark.heatmap_variants.choose_variant`; a 1-epoch timing
try had shown single runs of the default spread widely, so the rule pairs seeded runs): a variant replaces the
default only if (1) the paired case-bootstrap 95 % interval of its mean validation AUROC minus the default's
(averaged over the validation OOD sets and the runs, run r against run r) lies entirely above 0 and (2) the
difference is positive in every run but at most one. Among several, the highest mean AUROC.

Writes ``docs/benchmarks/heatmap_variants.{json,md}`` (the page generated from the JSON)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/choose_heatmap_variant.py --epochs 30
    python scripts/choose_heatmap_variant.py --render          # the page again from the JSON
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medood.benchmark.bundles import batch_images, bundle_parser, item_loader
from medood.benchmark.heatmap_variants import (
    VARIANTS,
    build_variant,
    bundle_detector_kwargs,
    bundle_training_data,
    choose_variant,
    ensemble_member,
    held_out_corruptions,
    member_scores,
    variant_metrics,
)
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.script import add_common_arguments, render_only, start
from medood.benchmark.tables import md_table
from medood.data.demo.bench import read_manifest
from medood.data.folders import scoring_datalist
from medood.engines.fit import train_heatmap_decoder

log = logging.getLogger("choose_heatmap_variant")
ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {
    "pathology": "heatmap_pathology_ood_classification",
    "endoscopy": "heatmap_endoscopy_ood_classification",
}


def validation_images(manifest: dict[str, Any], transform: Any) -> dict[str, torch.Tensor]:
    """``{set: (N, C, H, W)}`` of ``id_val`` and every ``ood_val`` set, through the bundle's preprocessing."""
    out = {}
    for name, s in manifest["sets"].items():
        if s["role"] in ("id_val", "ood_val"):
            items = scoring_datalist(s["dir"], None)
            out[name] = torch.cat(batch_images(item_loader(items, transform, 32, keys=["image"])))
    return out


def timed_scores(det: Any, images: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], float]:
    """``({set: image scores}, seconds per image)`` of ``det.score`` in batches of 32 (classifier pass included)."""
    scores, seconds, n = {}, 0.0, 0
    for name, x in images.items():
        parts = []
        for xb in x.split(32):
            t0 = time.perf_counter()
            parts.append(det.score(xb).image_score.double().cpu())
            seconds += time.perf_counter() - t0
        scores[name], n = torch.cat(parts).numpy(), n + x.shape[0]
    return scores, seconds / n


def train_runs(base: dict[str, Any], options: dict[str, Any], data: tuple[Any, torch.Tensor], seeds: int,
               ) -> tuple[dict[str, list[Any]], dict[str, list[float]]]:  # fmt: skip
    """``({variant: [fitted detector per seed]}, {variant: [training seconds per seed]})``; the default from the
    ensemble (its decoder 0, with a share of the ensemble's seconds)."""
    trained: dict[str, list[Any]] = {v: [] for v in VARIANTS}
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for seed in range(seeds):
        for name in (v for v in VARIANTS if v != "default"):
            det = build_variant(base, name, seed=seed, **options)
            t0 = time.perf_counter()
            train_heatmap_decoder(det, data[0], [data[1]], progress=False)
            seconds[name].append(round(time.perf_counter() - t0, 1))
            trained[name].append(det.eval())
            log.info("%s seed %d: trained in %.0f s", name, seed, seconds[name][-1])
        ens = trained["ensemble5"][-1]
        trained["default"].append(ensemble_member(ens, base, 0, **options))
        seconds["default"].append(round(seconds["ensemble5"][-1] / len(ens.decoders), 1))
    return trained, seconds


def run_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train every variant on the task's bundle data (``--seeds`` runs), score the validation sets, apply the rule."""
    bundle = ROOT / "bundles" / BUNDLES[task]
    parser = bundle_parser(bundle, ["inference.yaml", "train.yaml"], device="cpu")
    manifest = read_manifest(args.bench_dir / task)
    options = {
        "epochs": args.epochs, "lr": parser["learning_rate"], "batch_size": parser["train_batch_size"],
        "aux_corruptions": held_out_corruptions(manifest, parser["aux_corruptions"]),
        "aux_per_image": parser["aux_per_image"],
    }  # fmt: skip
    base = bundle_detector_kwargs(parser)
    id_loader, aux_images = bundle_training_data(parser, options["batch_size"])
    images = validation_images(manifest, parser.get_parsed_content("preprocessing"))
    trained, train_s = train_runs(base, options, (id_loader, aux_images), args.seeds)
    scores: dict[str, dict[str, np.ndarray]] = {}
    per_image: dict[str, list[float]] = {}
    for name, dets in trained.items():
        runs = [timed_scores(d, images) for d in dets]
        scores[name] = {k: np.stack([r[0][k] for r in runs], axis=1) for k in images}
        per_image[name] = [r[1] for r in runs]
    for seed, ens in enumerate(trained["ensemble5"]):  # the default read from the ensemble, checked on the cases
        for k, x in images.items():
            cols = member_scores(ens, x).double().numpy()
            np.testing.assert_allclose(cols[:, 0], scores["default"][k][:, seed], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(cols.mean(1), scores["ensemble5"][k][:, seed], rtol=1e-5, atol=1e-7)
    id_key = next(k for k, s in manifest["sets"].items() if s["role"] == "id_val")
    metrics = variant_metrics(scores, id_key, n_boot=args.n_boot)
    chosen, why = choose_variant(metrics)
    for name in VARIANTS:
        metrics[name].update(train_seconds=train_s[name], seconds_per_image=float(np.median(per_image[name])))
    return {
        "bundle": f"bundles/{BUNDLES[task]}",
        "n": {k: int(x.shape[0]) for k, x in images.items()},
        "training": {**{k: v for k, v in options.items() if k != "aux_corruptions"},
                     "aux_corruptions": list(options["aux_corruptions"]),
                     "held_out": sorted(set(parser["aux_corruptions"]) - set(options["aux_corruptions"])),
                     "id_images": sum(int(b["image"].shape[0]) for b in id_loader),
                     "other_organ_images": int(aux_images.shape[0])},
        "variants": metrics,
        "chosen": chosen,
        "why": why,
    }  # fmt: skip


def _cell(m: dict[str, Any], key: str) -> str:
    lo, hi = m[key + "_ci"]
    return f"{100 * m[key]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _pct(v: float) -> str:
    return f"{100 * v:+.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The page of the JSON this script writes."""
    lines = [
        "# Heatmap-OOD variants on VALIDATION data, and the choice",
        "",
        f"Generated by `{result['command']}` ({result['seconds']:.0f} s; {result['machine']}; OMP_NUM_THREADS="
        f"{result['omp_threads']}). Variants of the official code: {result['variants']}. Each decoder trained "
        f"{result['epochs']} epochs ({result['epochs_note']}) on the bundle's data and frozen classifier, "
        f"{result['seeds']} runs (seeds 0-{result['seeds'] - 1}: initialisation, corruptions, order); scored on "
        "the bench `id_val` images against the validation OOD family only (never a test OOD kind). Per set: "
        "AUROC / FPR95 in % of the seed-0 run with case-level bootstrap 95 % intervals "
        f"({result['n_boot']} resamples, seed 0). Rule (fixed before the run): {result['rule']}",
        "",
    ]
    for task, r in result["tasks"].items():
        sets = list(next(iter(r["variants"].values()))["sets"])
        t = r["training"]
        lines += [
            f"## {task} (`{r['bundle']}`)",
            "",
            f"Cases: {', '.join(f'{k} {v}' for k, v in r['n'].items())}. Decoder training: {t['id_images']} ID "
            f"images + their corruptions ({', '.join(t['aux_corruptions'])}; held out: {', '.join(t['held_out'])}, "
            f"the validation family) + {t['other_organ_images']} other-organ images; batch {t['batch_size']}, "
            f"Adam {t['lr']}.",
            "",
        ]
        rows = []
        for name, m in r["variants"].items():
            d = m.get("vs_default")
            diff = (f"{_pct(d['difference'])} [{_pct(d['ci'][0])}, {_pct(d['ci'][1])}]; runs "
                    + " ".join(_pct(v) for v in d["runs"]) if d else "reference")  # fmt: skip
            runs = m["run_mean_aurocs"]
            rows.append([name, *(f"{_cell(m['sets'][s], 'auroc')} / {_cell(m['sets'][s], 'fpr95')}" for s in sets),
                         f"{100 * m['mean_auroc']:.1f} ({100 * min(runs):.1f}-{100 * max(runs):.1f})", diff,
                         f"{np.median(m['train_seconds']):.0f}", f"{1000 * m['seconds_per_image']:.2f}"])  # fmt: skip
        header = ["variant (seed 0)", *(f"{s} AUROC / FPR95" for s in sets), "mean AUROC over runs (min-max)",
                  "mean AUROC - default [paired 95 % CI]; per run", "train s / run", "ms / image"]  # fmt: skip
        lines += [
            *md_table(header, rows),
            "",
            f"**Choice: {r['chosen']}.** " + " ".join(f"{k}: {v}." for k, v in r["why"].items()),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", type=Path, default=Path("/tmp/medood_benchmark/bench"))
    ap.add_argument("--tasks", nargs="+", choices=sorted(BUNDLES), default=sorted(BUNDLES))
    ap.add_argument("--epochs", type=int, default=30, help="epochs of every decoder (default: the bundles' 30)")
    ap.add_argument("--epochs-note", default="the bundles' budget; the official code trains 150")
    ap.add_argument("--seeds", type=int, default=5, help="training runs of every variant (seeds 0..N-1)")
    ap.add_argument("--n-boot", type=int, default=1000)
    add_common_arguments(ap, ROOT / "docs" / "benchmarks" / "heatmap_variants.json", threads=1)
    args = ap.parse_args()
    if render_only(args, markdown):
        return
    start(args)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        **bench_header(),
        "command": "python scripts/choose_heatmap_variant.py " + " ".join(sys.argv[1:]),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "epochs": args.epochs,
        "epochs_note": args.epochs_note,
        "n_boot": args.n_boot,
        "seeds": args.seeds,
        "variants": "; ".join(f"{k} {dict(v) or '(bundle settings)'}" for k, v in VARIANTS.items()),
        "rule": " ".join(choose_variant.__doc__.split("\n\n")[1].split()).replace("``", "`"),  # type: ignore[union-attr]
        "tasks": {},
    }
    for task in args.tasks:
        result["tasks"][task] = run_task(task, args)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_page(args.out, result, markdown(result))  # after every task: a finished task is kept
    log.info("chosen: %s", {k: v["chosen"] for k, v in result["tasks"].items()})


if __name__ == "__main__":
    main()
