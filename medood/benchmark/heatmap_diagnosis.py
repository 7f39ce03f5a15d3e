"""Per-stage figures of Heatmap-OOD on VALIDATION data (``scripts/diagnose_heatmap.py``): which stage limits it.

Measured on seeded decoder runs of :mod:`medood.benchmark.heatmap_variants` (the bundle's shipped detector options
and data, the validation family's corruptions held out): the decoder response (:func:`response_figures`: the score,
pixel mean of the channel-max ``|h|``, on ID training, held-out ID and validation OOD images; training vs held-out
AUROC); the target (:func:`target_figures`: ``|t - x|`` to the nearest same-class ID training image vs the painted
``|h|``, and the AUROC of an oracle painting exactly ``|t - x|``, also for other targets: :func:`alternative_targets`;
image statistics: :func:`intensity_figures`); the arms (:data:`MIXES`, :func:`mix_options`: corruptions only, other
organs only, both = the bundles' mix, pixel targets) under :func:`~medood.benchmark.heatmap_variants.choose_variant`'s
rule; the verdict (:func:`limiting_stage`, thresholds fixed before the run).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

from medood.benchmark.bundles import batch_images, bundle_parser, item_loader
from medood.benchmark.heatmap_variants import (
    build_variant,
    bundle_detector_kwargs,
    bundle_training_data,
    choose_variant,
    held_out_corruptions,
    member_scores,
    variant_metrics,
)
from medood.benchmark.stats import set_aurocs, summarise_runs
from medood.data.demo.bench import read_manifest
from medood.data.folders import scoring_datalist
from medood.detectors.heatmap import HeatmapDetector
from medood.detectors.heatmap_data import nearest_id_targets, predicted_features
from medood.detectors.vim import ViMDetector
from medood.engines.fit import train_heatmap_decoder
from medood.metrics import auroc
from medood.transforms.corruptions import corruption_plan
from medood.utils.neighbours import nearest_neighbours

__all__ = [
    "ARM_OPTIONS",
    "GAP_AUROC",
    "GAP_RATIO",
    "MIXES",
    "PAINT_RATIO",
    "alternative_targets",
    "auxiliary_groups",
    "diagnose_task",
    "image_scores",
    "intensity_figures",
    "limiting_stage",
    "mix_options",
    "response_figures",
    "shipped_options",
    "target_figures",
]

#: ``{arm: (corruptions of the ID images, other-organ images)}``: the auxiliary OOD data of each arm (``pixel_target``:
#: the bundles' mix with the target of the fix candidate for the target's definition, :data:`ARM_OPTIONS`).
MIXES = {
    "both": (True, True),
    "corruptions": (True, False),
    "other_organs": (False, True),
    "pixel_target": (True, True),
}
#: Detector options of an arm besides its mix: ``pixel_target`` searches the nearest ID target in pixels, any class.
ARM_OPTIONS: dict[str, dict[str, Any]] = {"pixel_target": {"target_space": "pixels"}}
#: A generalisation gap limits the detector when held-out ID images score this many times the training images...
GAP_RATIO = 1.5
#: ... and are separated from them with at least this AUROC.
GAP_AUROC = 0.75
#: The target stage limits it when the decoder paints less than this fraction of ``|t - x|`` on its own aux images.
PAINT_RATIO = 0.5


def mix_options(mix: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """``(detector options of the arm, whether it trains on the other-organ images)``; ``mix`` in :data:`MIXES`."""
    if mix not in MIXES:
        raise ValueError(f"unknown auxiliary mix {mix!r}; known: {sorted(MIXES)}")
    corruptions, organs = MIXES[mix]
    return {**options, **({} if corruptions else {"aux_corruptions": ()}), **ARM_OPTIONS.get(mix, {})}, organs


def shipped_options(base: Mapping[str, Any]) -> dict[str, Any]:
    """The decoder count and extra layers of a bundle's ``network_def`` (over any variant that pins official ones)."""
    return {"n_decoders": base.get("n_decoders", 1), "feature_layers": tuple(base.get("feature_layers", ()))}


@torch.no_grad()
def image_scores(detector: HeatmapDetector, images: Tensor, batch_size: int = 64) -> np.ndarray:
    """``(N,)`` detector scores (mean over its decoders of the pixel mean of channel-max ``|h|``), float64."""
    if images.shape[0] == 0:
        return np.zeros(0)
    cols = [member_scores(detector, xb) for xb in images.split(batch_size)]
    return torch.cat(cols).mean(1).double().numpy()


def auxiliary_groups(detector: HeatmapDetector, id_images: Tensor, other_organs: Tensor | None) -> dict[str, Tensor]:
    """The decoder's auxiliary OOD images by source: ``corruptions`` and ``other_organs`` (when given).

    The corruptions are the detector's seeded corruptions of the ID images, as
    :func:`~medood.detectors.heatmap_data.ood_pairs` makes them.
    """
    out = {}
    if detector.aux_corruptions and detector.aux_per_image > 0:
        plan = corruption_plan(id_images.shape[0], detector.aux_corruptions, detector.aux_per_image, detector.seed)
        out["corruptions"] = torch.stack([detector.corrupt(id_images[i], name, s) for i, name, s in plan])
    if other_organs is not None and other_organs.shape[0]:
        out["other_organs"] = other_organs
    return out


def _pixel_mean(d: Tensor) -> np.ndarray:
    return d.abs().amax(1).flatten(1).mean(1).double().numpy()


@torch.no_grad()
def target_figures(detector: HeatmapDetector, id_images: Tensor, groups: Mapping[str, Tensor],
                   reference: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Per image group: mean ``|t - x|``, the mean ``|h|`` the decoder paints there, and their ratio.

    ``|t - x|``: channel max, pixel mean; ``t`` the nearest same-class ID training image, as in the decoder's
    training pairs (images whose class no ID image has are left out). With a ``reference`` group (e.g. the ID
    validation images), every other group also gets ``target_auroc``: the AUROC (group positive) of an oracle
    decoder that paints exactly ``t - x``, and ``painted_auroc``: the decoder's own score's.
    """
    id_f, id_p = predicted_features(detector, [id_images])
    out, per_image = {}, {}
    for name, x in groups.items():
        f, p = predicted_features(detector, [x])
        idx = nearest_id_targets(id_f, id_p, f, p)
        keep = idx >= 0
        per_image[name] = (_pixel_mean(id_images[idx[keep]] - x[keep]), image_scores(detector, x[keep]))
        target, painted = (float(v.mean()) for v in per_image[name])
        ratio = painted / target if target > 0 else float("inf")
        out[name] = {"n": int(keep.sum()), "target": target, "painted": painted, "ratio": ratio}
    for name in per_image if reference is not None else ():
        if name != reference:
            for i, key in enumerate(("target_auroc", "painted_auroc")):
                ref, own = per_image[reference][i], per_image[name][i]  # type: ignore[index]
                labels = np.r_[np.zeros(ref.size), np.ones(own.size)]
                out[name][key] = float(auroc(np.r_[ref, own], labels))
    return out


@torch.no_grad()
def alternative_targets(detector: HeatmapDetector, id_images: Tensor, groups: Mapping[str, Tensor],
                        reference: str) -> dict[str, dict[str, float]]:  # fmt: skip
    """AUROC vs ``reference`` of oracles painting exactly ``|t - x|`` for other targets ``t`` than the decoder's.

    ``t``: the nearest ID training image in pixels, of any class (``pixels``) or of the same predicted class
    (``pixels_same_class``); the decoder's own (nearest in features, same class) is in :func:`target_figures`.
    """
    id_p = predicted_features(detector, [id_images])[1]
    dist: dict[str, dict[str, np.ndarray]] = {"pixels": {}, "pixels_same_class": {}}
    for name, x in groups.items():
        p = predicted_features(detector, [x])[1]
        for key, g in (("pixels", None), ("pixels_same_class", (p, id_p))):
            idx = nearest_neighbours(x.flatten(1), id_images.flatten(1), *(g or (None, None)))[0]
            dist[key][name] = _pixel_mean(id_images[idx.clamp_min(0)] - x)[idx.numpy() >= 0]
    out = {}
    for key, d in dist.items():
        ref = d[reference]
        out[key] = {k: float(auroc(np.r_[ref, v], np.r_[np.zeros(ref.size), np.ones(v.size)])) for k, v in d.items()
                    if k != reference}  # fmt: skip
        out[key]["mean"] = float(np.mean(list(out[key].values())))
    return out


def intensity_figures(images: Tensor, scores: np.ndarray) -> dict[str, float]:
    """Spearman correlation of ``scores`` with each image's mean intensity and contrast (standard deviation)."""
    flat = images.flatten(1).double()
    stats = {"mean_intensity": flat.mean(1).numpy(), "contrast": flat.std(1).numpy()}
    return {k: float(spearmanr(v, scores).statistic) for k, v in stats.items()}


def response_figures(scores: Mapping[str, np.ndarray], train_key: str, heldout_keys: list[str]) -> dict[str, Any]:
    """Mean score of every set; per held-out ID set its ratio to ``train_key``'s and the AUROC separating the two.

    Held-out images positive: 0.5 = no generalisation gap, 1 = the decoder knows its training images.
    """
    train = np.asarray(scores[train_key], np.float64)
    out: dict[str, Any] = {"mean": {k: float(np.mean(v)) for k, v in scores.items()}, "gap": {}}
    for k in heldout_keys:
        held = np.asarray(scores[k], np.float64)
        labels = np.r_[np.zeros(train.size), np.ones(held.size)]
        out["gap"][k] = {"ratio": float(held.mean() / train.mean()), "auroc": float(auroc(np.r_[train, held], labels))}
    return out


def limiting_stage(figures: Mapping[str, Any], mix_choice: str, reference: str = "both") -> dict[str, Any]:
    """The stage(s) that limit the detector, from the seed-averaged figures of one task.

    ``figures``: ``{"response": {"gap": {set: {ratio, auroc}}}, "targets": {group: {ratio, ...}}, "val_targets":
    {set: {target_auroc, painted_auroc, ...}}}``. A generalisation gap: some held-out ID set scores at least
    :data:`GAP_RATIO` times the training images with an AUROC of at least :data:`GAP_AUROC`; the target's scale:
    the decoder paints less than :data:`PAINT_RATIO` of ``|t - x|`` on some auxiliary group; the target's
    definition: an oracle painting exactly ``t - x`` would not rank the validation OOD sets better than the decoder
    (mean AUROC over the sets); the mix: an arm other than ``reference`` won the rule.
    """
    gap = [k for k, g in figures["response"]["gap"].items() if g["ratio"] >= GAP_RATIO and g["auroc"] >= GAP_AUROC]
    under = [k for k, t in figures["targets"].items() if t["ratio"] < PAINT_RATIO]
    vals = [v for v in figures["val_targets"].values() if "target_auroc" in v]
    oracle = float(np.mean([v["target_auroc"] for v in vals])) if vals else float("nan")
    painted = float(np.mean([v["painted_auroc"] for v in vals])) if vals else float("nan")
    stages = (["generalisation"] if gap else []) + (["target_scale"] if under else [])
    stages += ["target_definition"] if oracle <= painted else []
    stages += ["auxiliary_mix"] if mix_choice not in (reference, *ARM_OPTIONS) else []
    return {"stages": stages, "gap_sets": gap, "underpainted_groups": under, "mix_choice": mix_choice,
            "oracle_target_auroc": oracle, "decoder_auroc": painted,
            "thresholds": {"gap_ratio": GAP_RATIO, "gap_auroc": GAP_AUROC, "paint_ratio": PAINT_RATIO}}  # fmt: skip


def _run_figures(det: HeatmapDetector, images: Mapping[str, Tensor], groups: Mapping[str, Tensor],
                 oods: list[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:  # fmt: skip
    """Scores of every image set and the stage figures of one trained decoder run."""
    scores = {k: image_scores(det, x) for k, x in images.items()}
    response = response_figures({**scores, **{f"aux_{k}": image_scores(det, x) for k, x in groups.items()}},
                                "id_train", ["id_heldout", "id_val"])  # fmt: skip
    figures = {
        "response": response, "targets": target_figures(det, images["id_train"], groups),
        "val_targets": target_figures(det, images["id_train"], {k: images[k] for k in ["id_val", *oods]}, "id_val"),
        "intensity": {k: intensity_figures(images[k], scores[k]) for k in ("id_heldout", "id_val")},
        "alternative_targets": alternative_targets(det, images["id_train"], {k: images[k] for k in ["id_val", *oods]},
                                                   "id_val"),
    }  # fmt: skip
    return scores, figures


def diagnose_task(bundle: Path, bench: Path, dataset_dir: Path, epochs: int, seeds: int, n_boot: int = 1000,
                  **detector_options: Any) -> dict[str, Any]:  # fmt: skip
    """Every stage figure of one heatmap bundle, every mix arm trained ``seeds`` times (seeds ``0..seeds-1``).

    The decoders are trained as ``scripts/choose_heatmap_variant.py`` trains them (the bundle's shipped detector
    options, its ``train.yaml`` data from ``dataset_dir``, the validation family's corruptions held out, ``epochs``
    per decoder); scored on the bundle's ID training images (``id_train``), its own held-out ID images
    (``id_heldout``: its ``val`` split), the bench's ``id_val`` and validation OOD sets (never a test OOD kind).
    ``detector_options`` override the shipped ones (e.g. ``n_decoders=1``: one member of a shipped ensemble).
    """
    parser = bundle_parser(bundle, ["inference.yaml", "train.yaml"], device="cpu", dataset_dir=str(dataset_dir))
    manifest = read_manifest(bench)
    transform = parser.get_parsed_content("preprocessing")
    _images = lambda items: torch.cat(batch_images(item_loader(items, transform, 32, keys=["image"])))  # noqa: E731
    options = {
        "epochs": epochs, "lr": parser["learning_rate"], "batch_size": parser["train_batch_size"],
        "aux_corruptions": held_out_corruptions(manifest, parser["aux_corruptions"]),
        "aux_per_image": parser["aux_per_image"],
    }  # fmt: skip
    base = {**bundle_detector_kwargs(parser), **detector_options}
    id_loader, organs = bundle_training_data(parser, options["batch_size"])
    images = {"id_train": torch.cat(batch_images(id_loader)),
              "id_heldout": _images(parser.get_parsed_content("val_datalist"))}  # fmt: skip
    for name, s in manifest["sets"].items():
        if s["role"] in ("id_val", "ood_val"):
            images["id_val" if s["role"] == "id_val" else name] = _images(scoring_datalist(s["dir"], None))
    oods = [k for k, s in manifest["sets"].items() if s["role"] == "ood_val"]
    scores: dict[str, dict[str, list[np.ndarray]]] = {}
    figures: dict[str, list[Any]] = {}
    seconds: dict[str, list[float]] = {}
    for mix in MIXES:
        for seed in range(seeds):
            opts, with_organs = mix_options(mix, options)
            det = build_variant(base, "default", seed=seed, **opts, **shipped_options(base))
            t0 = time.perf_counter()
            train_heatmap_decoder(det, id_loader, [organs] if with_organs else None, progress=False)
            seconds.setdefault(mix, []).append(round(time.perf_counter() - t0, 1))
            ref = build_variant(base, "default", seed=seed, **options, **shipped_options(base))
            groups = auxiliary_groups(ref, images["id_train"], organs)
            run_scores, run_figures = _run_figures(det.eval(), images, groups, oods)
            for k, v in run_scores.items():
                scores.setdefault(mix, {}).setdefault(k, []).append(v)
            figures.setdefault(mix, []).append(run_figures)
    val = {mix: {k: np.stack(by[k], axis=1) for k in ["id_val", *oods]} for mix, by in scores.items()}
    vim = ViMDetector(model=copy.deepcopy(parser.get_parsed_content("classifier"))).fit(id_loader)
    vim_aurocs = set_aurocs({k: vim.score(images[k]).image_score.double().numpy() for k in val["both"]}, "id_val",
                            digits=None)  # fmt: skip
    metrics = variant_metrics(val, "id_val", reference="both", n_boot=n_boot)
    chosen, why = choose_variant(metrics, reference="both")
    summary = {mix: summarise_runs(runs) for mix, runs in figures.items()}
    for mix, by in val.items():
        runs = [set_aurocs({k: v[:, r] for k, v in by.items()}, "id_val", digits=None) for r in range(seeds)]
        metrics[mix].update(train_seconds=seconds[mix], set_aurocs={k: [r[k] for r in runs] for k in oods})
    return {
        "bundle": str(bundle.relative_to(bundle.parents[1])), "dataset_dir": str(dataset_dir),
        "n": {k: int(x.shape[0]) for k, x in images.items()}, "other_organ_images": int(organs.shape[0]),
        "detector_options": {k: v for k, v in base.items() if k in ("n_decoders", "feature_layers", "decoder")},
        "training": {**options, "aux_corruptions": list(options["aux_corruptions"])},
        "mix_arms": {k: {"corruptions": c, "other_organs": o} for k, (c, o) in MIXES.items()},
        "arm_options": ARM_OPTIONS,
        "figures": summary, "mixes": metrics, "chosen": chosen, "why": why, "vim_reference": vim_aurocs,
        "limiting": limiting_stage(summary["both"], chosen),
    }  # fmt: skip
