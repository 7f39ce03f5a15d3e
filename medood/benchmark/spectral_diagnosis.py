"""Spectral signatures diagnosed on the validation OOD family, and their setting chosen there (issue 23 item 2).

Used by ``scripts/diagnose_spectral.py`` (and its fitting helpers by ``scripts/check_spectral_setting.py``). Host:
the shipped multi-task network of ``bundles/spectral_brain_mri_ood_classification``; never a test OOD kind:

* :func:`spectra`: the singular values of every encoder stage of each item, one forward each;
* :func:`setting_grid`: the validation AUROCs of every setting (layers, singular values kept, normalisation,
  combination) with a brain bank; :func:`choose_setting`: the rule;
* :func:`domain_check`: the chosen setting with brain-only, pathology-only and joint banks;
* :func:`run_spectral_diagnosis`: all of it, as the JSON of ``docs/benchmarks/spectral_diagnosis.json`` (the
  page: :mod:`medood.benchmark.spectral_diagnosis_page`).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medood.benchmark.bundles import bundle_network
from medood.benchmark.features import layer_summaries
from medood.benchmark.runner import BUNDLES
from medood.benchmark.stats import set_aurocs
from medood.data.demo.bench import read_manifest
from medood.data.multitask import (
    BRAIN_CONTRASTS,
    brain_datalist,
    brain_transforms,
    image_folder_datalist,
    pathology_datalist,
    pathology_transforms,
)
from medood.detectors.spectral import SpectralDetector, singular_values
from medood.networks.feature_maps import encoder_stages

__all__ = [
    "BUNDLE",
    "bench_sets",
    "choose_setting",
    "detector",
    "domain_check",
    "fitted",
    "layer_sets",
    "run_spectral_diagnosis",
    "scores",
    "setting_grid",
    "spectra",
]

log = logging.getLogger(__name__)

BUNDLE = BUNDLES / "spectral_brain_mri_ood_classification"
N_SINGULAR: tuple[int | None, ...] = (None, 4, 8, 16)
NORMALIZATIONS = ("l2", "ratio", "none")
BRAIN_DOMAIN, PATHOLOGY_DOMAIN = 0, 1


def spectra(net: nn.Module, layers: Sequence[str], items: Sequence[dict], transform: Callable) -> list[torch.Tensor]:
    """Per layer, the ``(n, C)`` singular values of every item (one forward each)."""
    return layer_summaries(net, layers, items, transform, singular_values)


def bench_sets(manifest: dict[str, Any], brain: bool) -> dict[str, list[dict]]:
    """``id_val`` and every ``ood_val`` set of a bench task (never a test set)."""
    out: dict[str, list[dict]] = {}
    for name, s in manifest["sets"].items():
        if s["role"] not in ("id_val", "ood_val"):
            continue
        folder = Path(s["dir"])
        if brain:
            files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")))
            out[name] = [
                {"image": str(p), "case": p.name, "contrast": p.name.split("_")[-1].split(".")[0]} for p in files
            ]
        else:
            out[name] = image_folder_datalist(folder)
    return out


def detector(layers: Sequence[str], n_singular: int | None, normalization: str, combine: str) -> SpectralDetector:
    """An unfitted :class:`~medood.detectors.spectral.SpectralDetector` with this setting."""
    return SpectralDetector(layers=list(layers), n_singular=n_singular, normalization=normalization, combine=combine)


def fitted(
    det: SpectralDetector, idx: Sequence[int], bank: Sequence[torch.Tensor], labels: torch.Tensor | None
) -> SpectralDetector:
    """``det`` fitted on the signatures of the layers ``idx`` of ``bank`` (``labels``: their domains, or ``None``)."""
    det.partial_fit_signatures([det.signature_from(bank[i]) for i in idx], labels)
    det.finalize_fit()
    det.mark_fitted()
    return det


def scores(det: SpectralDetector, idx: Sequence[int], sig: Sequence[torch.Tensor]) -> np.ndarray:
    """The combined scores of the cases of ``sig`` (per layer singular values) at the layers ``idx``."""
    return det.combine(det.score_signatures([det.signature_from(sig[i]) for i in idx])).numpy()


def layer_sets(names: Sequence[str]) -> list[tuple[int, ...]]:
    """Each layer alone, the two and the three deepest, and all of them (indices into ``names``)."""
    n = len(names)
    return [(i,) for i in range(n)] + [tuple(range(n - 2, n)), tuple(range(n - 3, n)), tuple(range(n))]


def setting_grid(
    stages: Sequence[str],
    bank: Sequence[torch.Tensor],
    val: Mapping[str, Sequence[torch.Tensor]],
    contrast: Mapping[str, np.ndarray],
) -> list[dict[str, Any]]:
    """One row per setting: its validation AUROCs (``id_val`` against each other set of ``val``) and per contrast.

    Settings whose singular values kept reach a layer's channel count are left out (the same as keeping all).
    """
    grid: list[dict[str, Any]] = []
    for layer_idx, n_sing, norm in itertools.product(layer_sets(stages), N_SINGULAR, NORMALIZATIONS):
        channels = min(int(bank[i].shape[1]) for i in layer_idx)
        if n_sing is not None and n_sing >= channels:
            continue  # the same as keeping all
        for combine in ("mean", "normalized") if len(layer_idx) > 1 else ("mean",):
            det = fitted(detector([stages[i] for i in layer_idx], n_sing, norm, combine), layer_idx, bank, None)
            s = {k: scores(det, layer_idx, v) for k, v in val.items()}
            row = {
                "layers": list(layer_idx),
                "layer_names": [stages[i] for i in layer_idx],
                "n_singular": n_sing,
                "normalization": norm,
                "combine": combine,
                "auroc": set_aurocs(s, "id_val"),
            }
            row["auroc_per_contrast"] = {
                c: set_aurocs(s, "id_val", {k: contrast[k] == c for k in s})["mean"] for c in BRAIN_CONTRASTS
            }
            grid.append(row)
    return grid


def _key(r: Mapping[str, Any]) -> tuple:
    return r["layers"], r["n_singular"], r["normalization"], r["combine"]


def choose_setting(
    grid: Sequence[dict[str, Any]], current: Mapping[str, Any], margin: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(current row, best row, chosen row)`` of the grid.

    Among the settings within ``margin`` of the highest mean AUROC: ``current`` if it is one of them, else the one
    with the fewest departures from the paper's signature (normalisation other than ``l2``, fewer singular values,
    ``normalized`` combination), then the highest AUROC.
    """
    cur = next(r for r in grid if _key(r) == _key(current))
    best = max(grid, key=lambda r: r["auroc"]["mean"])
    near = [r for r in grid if r["auroc"]["mean"] >= best["auroc"]["mean"] - margin]

    def deviations(r: dict[str, Any]) -> tuple[int, float]:
        departures = (r["normalization"] != "l2") + (r["n_singular"] is not None) + (r["combine"] != "mean")
        return int(departures), -r["auroc"]["mean"]

    chosen = cur if cur in near else min(near, key=deviations)
    log.info(
        "current %.4f, best %.4f (%s), chosen %s", cur["auroc"]["mean"], best["auroc"]["mean"], _key(best), _key(chosen)
    )
    return cur, best, chosen


def domain_check(
    stages: Sequence[str],
    chosen: Mapping[str, Any],
    banks: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]],
    val: tuple[Mapping[str, Sequence[torch.Tensor]], Mapping[str, Sequence[torch.Tensor]]],
) -> dict[str, Any]:
    """The chosen setting with brain-only, pathology-only and joint (brain + pathology) signature banks.

    ``banks`` and ``val`` are ``(brain, pathology)``. Returns the validation AUROCs of each pairing and how often the
    nearest joint-bank signature of an ID validation case is of its own domain.
    """
    (bank_b, bank_p), (val_b, val_p) = banks, val
    lx = chosen["layers"]

    def make() -> SpectralDetector:
        return detector([stages[i] for i in lx], chosen["n_singular"], chosen["normalization"], chosen["combine"])

    joint_bank = [torch.cat([b, p]) for b, p in zip(bank_b, bank_p)]
    labels = torch.tensor([BRAIN_DOMAIN] * len(bank_b[0]) + [PATHOLOGY_DOMAIN] * len(bank_p[0]))
    joint = fitted(make(), lx, joint_bank, labels)
    only_b, only_p = fitted(make(), lx, bank_b, None), fitted(make(), lx, bank_p, None)

    def nearest(det: SpectralDetector, sig: Sequence[torch.Tensor]) -> torch.Tensor:
        d = torch.stack([torch.cdist(det.signature_from(sig[i]), b) for i, b in zip(lx, det.banks)]).mean(0)
        return det.signature_domains[d.argmin(1)]

    return {
        "brain_bank_only": set_aurocs({k: scores(only_b, lx, v) for k, v in val_b.items()}, "id_val"),
        "brain_joint_bank": set_aurocs({k: scores(joint, lx, v) for k, v in val_b.items()}, "id_val"),
        "pathology_bank_only": set_aurocs({k: scores(only_p, lx, v) for k, v in val_p.items()}, "id_val"),
        "pathology_joint_bank": set_aurocs({k: scores(joint, lx, v) for k, v in val_p.items()}, "id_val"),
        "pathology_brain_bank": set_aurocs({k: scores(only_b, lx, v) for k, v in val_p.items()}, "id_val"),
        "id_nearest_own_domain": {
            "brain": round(float((nearest(joint, val_b["id_val"]) == BRAIN_DOMAIN).double().mean()), 4),
            "pathology": round(float((nearest(joint, val_p["id_val"]) == PATHOLOGY_DOMAIN).double().mean()), 4),
        },
    }


def run_spectral_diagnosis(bench_dir: Path, brain_dir: Path, pathology_dir: Path, margin: float) -> dict[str, Any]:
    """The banks and validation sets, the grid, the choice and the domain check, as one JSON."""
    t0 = time.perf_counter()
    net, parser = bundle_network(BUNDLE)
    stages = encoder_stages(net, 4)
    brain_tf = brain_transforms(False, parser["pixdim"], parser["fov"])
    path_tf = pathology_transforms(False)
    fit_brain = brain_datalist(brain_dir / "dataset.json", "training", label_key=None)
    fit_path = pathology_datalist(pathology_dir, "train")
    brain_val = bench_sets(read_manifest(bench_dir / "brain_mri"), brain=True)
    path_val = bench_sets(read_manifest(bench_dir / "pathology"), brain=False)
    n_val = {"brain": {k: len(v) for k, v in brain_val.items()}, "pathology": {k: len(v) for k, v in path_val.items()}}
    log.info("fit: %d brain volumes, %d patches; validation: %s", len(fit_brain), len(fit_path), n_val)
    bank_b = spectra(net, stages, fit_brain, brain_tf)
    bank_p = spectra(net, stages, fit_path, path_tf)
    val_b = {k: spectra(net, stages, v, brain_tf) for k, v in brain_val.items()}
    val_p = {k: spectra(net, stages, v, path_tf) for k, v in path_val.items()}
    contrast = {k: np.array([it["contrast"] for it in v]) for k, v in brain_val.items()}
    log.info("spectra of every set in %.0f s", time.perf_counter() - t0)
    current = {"layers": [stages.index(x) for x in parser["ood_layers"]], "n_singular": None, "normalization": "l2",
               "combine": parser["detector_def"]["combine"]}  # fmt: skip
    grid = setting_grid(stages, bank_b, val_b, contrast)
    cur, best, chosen = choose_setting(grid, current, margin)
    domains = domain_check(stages, chosen, (bank_b, bank_p), (val_b, val_p))
    per_layer = [r for r in grid if len(r["layers"]) == 1 and r["n_singular"] is None and r["normalization"] == "l2"]
    protocol = (
        f"host {BUNDLE.name}/models/model.pt; bank: demo training data ({len(fit_brain)} brain volumes "
        f"x contrast, {len(fit_path)} pathology patches); validation: {bench_dir} brain_mri / "
        "pathology id_val against their ood_val sets only (no test OOD kind is read); distance min; "
        f"choice: within {margin} of the highest mean brain validation AUROC, the current setting, else "
        "the fewest departures from the paper's signature"
    )
    return {"protocol": protocol, "stages": stages, "channels": [int(b.shape[1]) for b in bank_b],
            "n_validation": n_val, "current": cur, "best": best, "chosen": chosen, "chosen_is_current": chosen is cur,
            "per_layer": per_layer, "grid": grid, "domains": domains, "seconds": round(time.perf_counter() - t0, 1),
            "omp_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
