"""The spectral bundle's own baselines on its host: prediction uncertainty and pooled Mahalanobis, one fit set.

The spectral paper claims that spectral signatures beat prediction-uncertainty scores of the segmentation
(softmax entropy, MC dropout). The brain bench has no training split and the post-hoc family needs a classifier,
so :func:`host_family` scores every set the benchmark runs on the spectral bundle's shipped multi-task host (its
``network_def``, ``preprocessing`` and ``ood_layers`` from ``inference.yaml``) with:

* ``seg_entropy``: mean softmax entropy over the predicted foreground (no fit);
* ``mc_dropout``: mean MC-dropout predictive variance over the predicted foreground (the host's own dropout);
* ``mahalanobis_pool``: pooled Mahalanobis on the bundle's ``ood_layers``;
* ``spectral``: the bundle's ``detector_def`` (same layers and settings as the shipped detector), refitted,

both fitted detectors on the same ID volumes (the bench ``id_fit`` split), so the comparison uses one fit set.
Rows are named ``<detector><suffix>`` (``seg_entropy@spectral``), as the classifier seeds' same-host rows.

:func:`fit_detectors` and :func:`score_items` are the feature loop ``scripts/bench_spectral.py`` shares (one
recorded forward per case feeds every feature detector; MC dropout runs its own passes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medood.benchmark.bundles import bundle_parser, load_network
from medood.benchmark.features import recorded_forward
from medood.benchmark.timing import peak_memory
from medood.data import nifti_datalist
from medood.detectors.base import OODDetector
from medood.detectors.feature_mahalanobis import FeatureMahalanobisDetector
from medood.detectors.mc_dropout import MCDropoutDetector
from medood.detectors.posthoc import begin_fit, end_fit, fit_batch, score_batch
from medood.detectors.seg_entropy import SegEntropyDetector
from medood.detectors.spectral import SpectralDetector
from medood.networks.feature_maps import FeatureRecorder
from medood.utils.io import case_name

__all__ = [
    "BASELINES",
    "FIT_SET",
    "HostFamily",
    "VolumeHost",
    "feature_detectors",
    "feature_notes",
    "fit_and_score",
    "fit_detectors",
    "host_family",
    "score_items",
    "volume_host",
]

logger = logging.getLogger(__name__)

#: the baselines of the claim, in page order (the refitted spectral row follows them)
BASELINES = ("seg_entropy", "mc_dropout", "mahalanobis_pool")
#: the bench set the feature detectors are fitted on (:func:`medood.data.demo.bench.brain_plan`)
FIT_SET = "id_fit"

Transform = Callable[[dict[str, Any]], Mapping[str, Any]]


def fit_detectors(net: nn.Module, recorder: FeatureRecorder, transform: Transform, items: Sequence[dict],
                  dets: Mapping[str, OODDetector]) -> float:  # fmt: skip
    """Stream ``items`` through every detector of ``dets`` that needs fitting (one forward each); returns seconds."""
    start = time.perf_counter()
    begin_fit(dict(dets))
    for item in items:
        fit_batch(dict(dets), recorded_forward(net, recorder, transform, item)[1], None)
    end_fit(dict(dets))
    seconds = time.perf_counter() - start
    logger.info("fitted on %d cases in %.0f s", len(items), seconds)
    return seconds


def score_items(
    net: nn.Module,
    recorder: FeatureRecorder,
    transform: Transform,
    items: Sequence[dict],
    dets: Mapping[str, OODDetector],
    mc: MCDropoutDetector | None,
    key: Callable[[dict], str],
) -> tuple[dict[str, dict[str, float]], float, float]:
    """Score ``items``: one recorded forward per item for ``dets``, plus ``mc``'s own passes (row ``mc_dropout``).

    Returns:
        ``({detector: {key(item): score}}, seconds of the shared passes, seconds of the MC-dropout passes)``.
    """
    scores: dict[str, dict[str, float]] = {name: {} for name in [*dets, *(["mc_dropout"] if mc else [])]}
    shared = sampled = 0.0
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        x, feats = recorded_forward(net, recorder, transform, item)
        for name, v in score_batch(dict(dets), feats).items():
            scores[name][key(item)] = float(v[0])
        t1 = time.perf_counter()
        if mc is not None:
            scores["mc_dropout"][key(item)] = float(mc.score(x).image_score[0])
        shared, sampled = shared + t1 - t0, sampled + time.perf_counter() - t1
        if i % 50 == 0:
            logger.info("scored %d / %d", i + 1, len(items))
    return scores, shared, sampled


def fit_and_score(
    net: nn.Module,
    layers: Sequence[str],
    transform: Transform,
    items: Mapping[str, Sequence[dict]],
    dets: Mapping[str, OODDetector],
    mc: MCDropoutDetector | None,
    key: Callable[[dict], str],
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Fit ``dets`` on ``items["fit"]`` and score ``items["eval"]`` with ``layers`` and the output recorded.

    Returns:
        ``({detector: {key(item): score}}, {"fit", "shared", "mc": seconds})`` (:func:`score_items`).
    """
    recorder = FeatureRecorder(net, {name: name for name in [*layers, ""]})
    try:
        fit = fit_detectors(net, recorder, transform, items["fit"], dets)
        scores, shared, sampled = score_items(net, recorder, transform, items["eval"], dets, mc, key)
    finally:
        recorder.remove()
    return scores, {"fit": fit, "shared": shared, "mc": sampled}


@dataclass
class VolumeHost:
    """A volume bundle's host network with its preprocessing, feature layers and a fresh copy of its detector.

    Attributes:
        network: the shipped network (eval mode).
        transform: the bundle's ``preprocessing``.
        layers: the bundle's ``ood_layers``.
        detector: the bundle's ``detector_def``, unfitted.
        description: one phrase naming the host, for the page.
    """

    network: nn.Module
    transform: Transform
    layers: list[str]
    detector: OODDetector
    description: str


def volume_host(bundle: Path, configs: Sequence[str] = ("inference.yaml",)) -> VolumeHost:
    """The host of a volume bundle (``network_def`` with ``models/model.pt``, ``preprocessing``, ``ood_layers``)."""
    parser = bundle_parser(bundle, configs)
    net = load_network(parser, "network_def", bundle / "models" / "model.pt")
    layers = list(parser.get_parsed_content("ood_layers"))
    detector = parser.get_parsed_content("detector_def")
    desc = (f"the shipped multi-task host of {bundle.name} ({type(net).__name__}, its inference.yaml preprocessing; "
            f"feature layers {', '.join(layers)})")  # fmt: skip
    return VolumeHost(net, parser.get_parsed_content("preprocessing"), layers, detector, desc)


@dataclass
class HostFamily:
    """The rows of :func:`host_family`.

    Attributes:
        scores: ``{row: {set: {case: score}}}``.
        cost: ``{row: {"seconds_per_image", "peak_mb", "how"}}``.
        family: the runner's same-host entry: ``{"host", "rows": {baseline: row}, "sentence", "refit", "pairs"}``,
            ``refit`` the refitted spectral row (no baseline of the overall ranking), ``pairs`` the paired tests
            of the page (the seed against every row, the refitted spectral row against pooled Mahalanobis: one
            fit set).
    """

    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    cost: dict[str, dict[str, Any]] = field(default_factory=dict)
    family: dict[str, Any] = field(default_factory=dict)


def _key(item: dict) -> str:
    return f"{item['set']}/{case_name(item['image'])}"


def feature_detectors(layers: Sequence[str]) -> dict[str, OODDetector]:
    """The feature detectors of the spectral comparisons on ``layers`` (the deepest of them: ``*_bottleneck``).

    :func:`host_family` takes ``seg_entropy`` and ``mahalanobis_pool`` (and the bundle's own spectral detector);
    ``scripts/bench_spectral.py`` all of them.
    """
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


def feature_notes(mc_samples: int) -> dict[str, str]:
    """What each row of ``scripts/bench_spectral.py`` is (:func:`feature_detectors` on its 2 stages, MC dropout)."""
    return {
        "spectral": "2 deepest encoder stages (downsamples.1, bottleneck), min distance, mean over layers",
        "spectral_bottleneck": "bottleneck only, min distance",
        "spectral_normalized": "2 stages, per-layer normalised by leave-one-out training distances",
        "mahalanobis_pool": "global-average-pooled 2 stages, one Gaussian each, mean of squared distances",
        "mahalanobis_pool_bottleneck": "bottleneck only",
        "seg_entropy": "mean softmax entropy over the predicted foreground",
        "seg_entropy_volume": "mean softmax entropy over the whole input",
        "mc_dropout": f"mean predictive variance over the predicted foreground, {mc_samples} passes",
    }


def host_family(host: VolumeHost, sets: Mapping[str, Path], fit_dir: Path, seed: str, mc_samples: int = 6,
                limit: int | None = None) -> HostFamily:  # fmt: skip
    """Fit on the volumes of ``fit_dir`` and score every volume of ``sets`` (``{set: folder}``) on ``host``.

    Args:
        host: the seed's host (:func:`volume_host`).
        sets: the sets the task runs.
        fit_dir: ID volumes to fit ``mahalanobis_pool`` and ``spectral`` on (the bench ``id_fit`` split).
        seed: the seed method whose host this is: rows ``<detector>@<seed>``.
        mc_samples: stochastic passes of MC dropout.
        limit: at most this many volumes per set and for the fit (tests).
    """
    suffix, net = f"@{seed}", host.network
    dets = {name: d for name, d in feature_detectors(host.layers).items() if name in BASELINES}
    dets["spectral"] = host.detector
    for d in dets.values():
        d.eval()
    mc = MCDropoutDetector(model=net, n_samples=mc_samples, region="foreground")
    items = {
        "fit": nifti_datalist(fit_dir)[:limit],
        "eval": [{**it, "set": s} for s, folder in sets.items() for it in nifti_datalist(folder)[:limit]],
    }
    with torch.no_grad():
        (scored, seconds), _, peak = peak_memory(
            lambda: fit_and_score(net, host.layers, host.transform, items, dets, mc, _key)
        )
    out, n = HostFamily(), len(items["eval"])
    for name, by_key in scored.items():
        row = out.scores.setdefault(name + suffix, {s: {} for s in sets})
        for k, v in by_key.items():
            set_name, case = k.split("/", 1)
            row[set_name][case] = v
    fit = f"fitted on {len(items['fit'])} ID volumes of the bench {FIT_SET} split in {seconds['fit']:.1f} s"
    how = {
        "seg_entropy": "mean softmax entropy over the predicted foreground (no fit)",
        "mc_dropout": f"mean MC-dropout predictive variance over the predicted foreground, {mc_samples} passes of "
        f"the host's own dropout (s / volume: the shared pass plus the sampling)",
        "mahalanobis_pool": f"pooled Mahalanobis on {', '.join(host.layers)}, {fit}",
        "spectral": f"the bundle's detector_def refitted ({fit}; the seed row uses the shipped fit)",
    }
    for name, text in how.items():
        spent = seconds["shared"] + (seconds["mc"] if name == "mc_dropout" else 0.0)
        out.cost[name + suffix] = {"seconds_per_image": spent / max(n, 1), "peak_mb": peak,
                                   "how": f"{text}; one recorded forward per volume shared by the rows; host: "
                                   f"{host.description}"}  # fmt: skip
    rows = {name: name + suffix for name in BASELINES}
    refit = "spectral" + suffix
    out.family = {
        "host": host.description,
        "rows": rows,
        "sentence": f"Rows `<detector>{suffix}`: {seed}'s baselines on {host.description}: "
        f"{', '.join(BASELINES)} and spectral refitted, the fitted ones on the bench {FIT_SET} split (one fit set).",
        "refit": refit,
        "pairs": [*([seed, r] for r in [*rows.values(), refit]), [refit, rows["mahalanobis_pool"]]],
    }
    return out
