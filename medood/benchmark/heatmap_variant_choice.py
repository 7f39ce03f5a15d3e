"""The run of ``scripts/choose_heatmap_variant.py`` and its page: every variant trained and scored on validation data.

Per task (a 2-D heatmap bundle), :func:`run_task` trains every variant of
:data:`~medood.benchmark.heatmap_variants.VARIANTS` ``seeds`` times on the bundle's data less the validation
family's corruptions (:func:`train_runs`), scores the bench's ``id_val`` and ``ood_val`` sets (:func:`timed_scores`)
and applies :func:`~medood.benchmark.heatmap_variants.choose_variant`. :func:`markdown`: the page of the JSON
(``docs/benchmarks/heatmap_variants.md``).
"""

from __future__ import annotations

import logging
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
from medood.benchmark.runner import BUNDLES as BUNDLES_DIR
from medood.benchmark.tables import md_table, pct, pct_ci
from medood.data.demo.bench import read_manifest
from medood.data.folders import scoring_datalist
from medood.engines.fit import train_heatmap_decoder

__all__ = ["BUNDLES", "markdown", "run_task", "timed_scores", "train_runs", "validation_images"]

log = logging.getLogger(__name__)

#: task -> its 2-D heatmap bundle
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
    """``({variant: [fitted detector per seed]}, {variant: [training seconds per seed]})``.

    The default is read from the ensemble (its decoder 0, with a share of the ensemble's seconds).
    """
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


def run_task(task: str, bench_dir: Path, epochs: int, seeds: int, n_boot: int) -> dict[str, Any]:
    """Train every variant on the task's bundle data (``seeds`` runs), score the validation sets, apply the rule."""
    bundle = BUNDLES_DIR / BUNDLES[task]
    parser = bundle_parser(bundle, ["inference.yaml", "train.yaml"], device="cpu")
    manifest = read_manifest(bench_dir / task)
    options = {
        "epochs": epochs, "lr": parser["learning_rate"], "batch_size": parser["train_batch_size"],
        "aux_corruptions": held_out_corruptions(manifest, parser["aux_corruptions"]),
        "aux_per_image": parser["aux_per_image"],
    }  # fmt: skip
    base = bundle_detector_kwargs(parser)
    id_loader, aux_images = bundle_training_data(parser, options["batch_size"])
    images = validation_images(manifest, parser.get_parsed_content("preprocessing"))
    trained, train_s = train_runs(base, options, (id_loader, aux_images), seeds)
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
    metrics = variant_metrics(scores, id_key, n_boot=n_boot)
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
    return pct_ci(m[key], m[key + "_ci"])


def markdown(result: dict[str, Any]) -> str:
    """The page of the JSON ``scripts/choose_heatmap_variant.py`` writes."""
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
            diff = (pct_ci(d["difference"], d["ci"], "+") + "; runs " + " ".join(pct(v, "+") for v in d["runs"])
                    if d else "reference")  # fmt: skip
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
