"""The official Heatmap-OOD variants on a heatmap bundle's frozen classifier, for a choice on validation data.

:data:`VARIANTS` holds the :class:`~medood.detectors.HeatmapDetector` options of each variant (the official code's
loss range, multi-layer input and 5-decoder ensemble; ``scripts/choose_heatmap_variant.py`` trains and scores them):

* :func:`bundle_detector_kwargs` / :func:`bundle_training_data`: a bundle's ``network_def`` arguments and its
  decoder training data (ID training loader, other-organ auxiliary images), read from its own configs;
* :func:`build_variant`: a seeded detector of one variant, on its own copy of the frozen classifier;
* :func:`ensemble_member`: one decoder of a trained ensemble as a one-decoder detector; :func:`member_scores`: the
  image score of every decoder of a detector (an ensemble's score is their mean).

An ensemble's decoder 0 is built and trained exactly as the one decoder of the default variant with the same seed
(same initialisation, data and order: the members are trained one after the other), so the default variant is read
from the ensemble instead of being trained again (``tests/benchmark/test_heatmap_variants.py`` checks it).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader
from torch import Tensor

from medood.benchmark.bundles import batch_images, item_loader
from medood.benchmark.stats import as_runs, bootstrap_metrics, paired_mean_auroc_difference, set_aurocs
from medood.data.auxiliary import auxiliary_datalist
from medood.detectors.heatmap import HeatmapDetector

__all__ = [
    "VARIANTS",
    "build_variant",
    "bundle_detector_kwargs",
    "bundle_training_data",
    "choose_variant",
    "ensemble_member",
    "held_out_corruptions",
    "member_scores",
    "variant_metrics",
]

#: ``{variant: HeatmapDetector options}`` over the bundle's ``network_def``. ``multi_layer``: the pooled output of
#: ``layer3`` joins ``z`` (the pooled ``layer4`` output): the classifier's last two stages, as the official
#: ``fw_layers = 3`` feeds its decoder (which adds the unpooled maps inside the decoder instead).
#: Every variant sets both the decoder count and the extra layers, so a bundle that ships a chosen variant (the
#: pathology ensemble, the endoscopy multi-layer input) still gives the official default as ``default``.
_OFFICIAL: dict[str, Any] = {"n_decoders": 1, "feature_layers": ()}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": _OFFICIAL,
    "loss_range": {**_OFFICIAL, "loss_input_range": (0.0, 1.0)},
    "multi_layer": {**_OFFICIAL, "feature_layers": ("layer3",)},
    "ensemble5": {**_OFFICIAL, "n_decoders": 5},
}


def bundle_detector_kwargs(parser: ConfigParser) -> dict[str, Any]:
    """The parsed arguments of a bundle's ``network_def`` (its classifier with the shipped weights among them)."""
    raw = parser["network_def"]
    return {k: parser.get_parsed_content(f"network_def#{k}") for k in raw if not k.startswith("_")}


def bundle_training_data(parser: ConfigParser, batch_size: int = 32) -> tuple[DataLoader, Tensor]:
    """A heatmap bundle's decoder training data (its ``train.yaml`` merged): ID training loader, auxiliary images.

    The auxiliary images are the bundle's other-organ sample (``aux_dirs``, ``aux_per_folder``, ``seed``; the
    evaluation folders refused); the corruptions of the ID images are the detector's own (``aux_corruptions``).
    """
    transform = parser.get_parsed_content("preprocessing")
    ids = parser.get_parsed_content("id_train")
    aux = auxiliary_datalist(
        parser.get_parsed_content("aux_dirs"), forbidden=parser.get_parsed_content("evaluation_dirs"),
        max_per_folder=parser.get_parsed_content("aux_per_folder"), seed=parser.get_parsed_content("seed"),
    )  # fmt: skip
    id_loader = item_loader(ids, transform, batch_size, keys=["image"])
    aux_images = torch.cat(batch_images(item_loader(aux, transform, batch_size, keys=["image"])))
    return id_loader, aux_images


def build_variant(base: Mapping[str, Any], variant: str, seed: int = 0, **options: Any) -> HeatmapDetector:
    """A heatmap detector of ``variant`` (:data:`VARIANTS`) on ``base`` arguments, seeded.

    ``torch.manual_seed(seed)`` right before construction (the decoders' initialisation) and ``seed`` as the
    detector's seed (corruptions, training order); the classifier of ``base["model"]`` is deep-copied, so each
    variant hooks its own frozen copy. ``options`` override both (e.g. ``epochs``, ``aux_corruptions``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown heatmap variant {variant!r}; known: {sorted(VARIANTS)}")
    kwargs = {**base, **VARIANTS[variant], **options, "seed": seed}
    if kwargs.get("model") is not None:
        kwargs["model"] = copy.deepcopy(kwargs["model"])
    torch.manual_seed(seed)
    return HeatmapDetector(**kwargs)


def ensemble_member(ensemble: HeatmapDetector, base: Mapping[str, Any], index: int = 0,
                    **options: Any) -> HeatmapDetector:  # fmt: skip
    """Decoder ``index`` of a fitted ensemble as a fitted one-decoder detector (feature range and classifier shared).

    ``base`` and ``options`` as the ensemble was built with (:func:`build_variant`), without ``n_decoders``.
    """
    single = build_variant(base, "default", seed=ensemble.seed, **options)
    state = {k: v for k, v in ensemble.state_dict().items() if not k.startswith(("decoder.", "extra_decoders."))}
    state |= {f"decoder.{k}": v for k, v in ensemble.decoders[index].state_dict().items()}
    single.load_state_dict(state)
    return single.eval().mark_fitted()  # type: ignore[return-value]


@torch.no_grad()
def member_scores(detector: HeatmapDetector, images: Tensor) -> Tensor:
    """``(B, n_decoders)`` image scores, one column per decoder: the pixel mean of its channel-max ``|h|``.

    The detector's image score is their mean (the map and its pixel mean are both linear in the members' maps).
    """
    detector.check_fitted()
    hs = detector.residuals(detector.extract_features(images.to(detector.device)))
    return torch.stack([h.abs().amax(1).flatten(1).mean(1) for h in hs], dim=1).float().cpu()


def held_out_corruptions(manifest: Mapping[str, Any], corruptions: Sequence[str]) -> list[str]:
    """``corruptions`` without those of the manifest's validation OOD family (``val_ood/<corruption>`` folders)."""
    held = {Path(s["dir"]).name for s in manifest["sets"].values() if s["role"] == "ood_val"}
    return [c for c in corruptions if c not in held]


def variant_metrics(
    scores: Mapping[str, Mapping[str, np.ndarray]], id_key: str, reference: str = "default", n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per variant: metrics of its run 0, the mean AUROC of every run, and the paired difference to ``reference``.

    Args:
        scores: ``{variant: {set: (N,) or (N, R) scores}}`` (``R`` training runs, e.g. seeds; run ``r`` of every
            variant paired with run ``r`` of ``reference``), the ID set ``id_key`` among the sets, the same cases
            in the same order for every variant.
        id_key: the ID set.
        reference: the variant the others are compared with. Defaults to ``"default"``.
        n_boot: bootstrap resamples. Defaults to 1000.
        seed: bootstrap seed. Defaults to 0.

    Returns:
        ``{variant: {"sets": {set: auroc, auroc_ci, fpr95, fpr95_ci (run 0, case bootstrap)}, "run_mean_aurocs":
        [mean AUROC over the OOD sets, per run], "mean_auroc": their mean, "vs_<reference>":
        :func:`~medood.benchmark.stats.paired_mean_auroc_difference` (averaged over sets and runs)}}``.
    """
    ref = scores[reference]
    out: dict[str, dict[str, Any]] = {}
    for name, by_set in scores.items():
        runs = {k: as_runs(v) for k, v in by_set.items()}
        oods = {k: v for k, v in runs.items() if k != id_key}
        sets = {}
        for k, v in oods.items():
            m = bootstrap_metrics(runs[id_key][:, 0], v[:, 0], n_boot, seed)
            sets[k] = {key: m[key] for key in ("auroc", "auroc_ci", "fpr95", "fpr95_ci")}
        n_runs = runs[id_key].shape[1]
        run_means = [set_aurocs({k: v[:, r] for k, v in runs.items()}, id_key, digits=None)["mean"]
                     for r in range(n_runs)]  # fmt: skip
        out[name] = {"sets": sets, "run_mean_aurocs": run_means, "mean_auroc": float(np.mean(run_means))}
        if name != reference:
            out[name]["vs_" + reference] = paired_mean_auroc_difference(
                runs[id_key], list(oods.values()), as_runs(ref[id_key]), [as_runs(ref[k]) for k in oods], n_boot, seed
            )
    return out


def choose_variant(metrics: Mapping[str, Mapping[str, Any]], reference: str = "default") -> tuple[str, dict[str, str]]:
    """The rule of ``scripts/choose_heatmap_variant.py``: ``(chosen variant, {variant: why it is or is not})``.

    A variant replaces ``reference`` only if (1) the paired case-bootstrap 95 % interval of its mean validation
    AUROC minus the reference's (averaged over the OOD sets and the R training runs, run r paired with run r) lies
    entirely above 0 and (2) the difference is positive in every run but at most one (every run when R < 3): the
    interval resamples cases, not training runs. Among several such variants, the one with the highest mean
    AUROC; else ``reference``.
    """
    why, winners = {}, []
    for name, m in metrics.items():
        if name == reference:
            continue
        d = m["vs_" + reference]
        runs = d["runs"]
        need = len(runs) - 1 if len(runs) >= 3 else len(runs)
        ok_ci, ok_runs = d["ci"][0] > 0, sum(r > 0 for r in runs) >= need
        why[name] = (f"mean AUROC {m['mean_auroc']:.4f}, difference {d['difference']:+.4f} "
                     f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] ({'above 0' if ok_ci else 'not above 0'}), "
                     f"positive in {sum(r > 0 for r in runs)} of {len(runs)} runs (needed: {need})")  # fmt: skip
        if ok_ci and ok_runs:
            winners.append(name)
    chosen = max(winners, key=lambda n: metrics[n]["mean_auroc"]) if winners else reference
    return chosen, why
