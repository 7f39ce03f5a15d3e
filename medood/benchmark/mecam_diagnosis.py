"""Per-stage figures of MECAM on VALIDATION data (``scripts/diagnose_mecam.py``, issue 23): which stage limits it.

For every image of a set (:func:`image_figures`, one batch at a time):

* the classifier: the final exit's maximum softmax probability (MSP) and class;
* CAM quality per exit: the predicted-class CAM ``M^_e`` (:meth:`MECAMDetector.fused_cam` of that exit alone):
  its mean, its normalised entropy (as a distribution over the pixels) and the fraction of its mass in its top
  10 % pixels; the exit's confidence and the fused CAM's mean;
* the score read-out: ``||f(x)||^2`` and two controls of the shipped masking: the fused CAM's values at shuffled
  pixel locations (same mass, random place) and the constant ``M = mean(M)``;
* every candidate setting (:data:`CHANGES` x :data:`STRENGTHS` x the 15 exit subsets): ``-change(f(x), f(x'))``
  with ``x' = x (1 - s M)``.

:func:`set_table` turns them into AUROCs (ID validation against each validation OOD set), :func:`select` applies
:data:`RULE`. The page: :mod:`medood.benchmark.mecam_diagnosis_page`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

from medood.benchmark.stats import paired_mean_auroc_difference
from medood.detectors.mecam import CHANGES, MECAMDetector, all_exit_subsets, feature_change
from medood.metrics import auroc

__all__ = [
    "CHANGES",
    "RULE",
    "SHIPPED",
    "STRENGTHS",
    "cam_quality",
    "candidate_name",
    "image_figures",
    "select",
    "set_table",
]

#: the mask strength ``s`` of ``x' = x (1 - s M)`` (the paper: 1)
STRENGTHS = (1.0, 0.5)
#: the shipped setting's candidate name (the bundles' inference.yaml: all four exits, MSE, full mask)
SHIPPED = "exits_0123/mse/1.0"
#: the selection rule, fixed before any figure was computed (written into the JSON and the page)
RULE = (
    "Among the candidates (every exit subset x change in {mse, relative, cosine} x mask strength in {1.0, 0.5}), "
    "the one with the highest mean AUROC over ALL validation OOD sets of the task (the corruption family "
    "val_shuffle, val_spike and the cross-task proxy sets, each weighted equally; ID = id_val) is chosen; it "
    "replaces the shipped setting (all exits, mse, 1.0) only if the paired case-bootstrap 95 % interval of its mean "
    "AUROC minus the shipped one's lies entirely above 0 (1000 resamples, seed 0). Ties: the earlier candidate."
)
TOP_FRACTION = 0.1


def candidate_name(exits: Sequence[int], change: str, strength: float) -> str:
    """``"exits_023/relative/0.5"``."""
    return f"exits_{''.join(map(str, exits))}/{change}/{strength}"


def cam_quality(cam: Tensor) -> dict[str, Tensor]:
    """``mean``, normalised ``entropy`` (0: one pixel, 1: uniform) and ``top10`` mass fraction of ``(B, 1, *S)``."""
    flat = cam.flatten(1).double()
    n = flat.shape[1]
    p = flat / flat.sum(1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(1) / np.log(n)
    k = max(1, round(TOP_FRACTION * n))
    top = p.topk(k, dim=1).values.sum(1)
    return {"mean": flat.mean(1), "entropy": entropy, "top10": top}


def _shuffled(cam: Tensor, gen: torch.Generator) -> Tensor:
    """Each image's CAM values at random pixel locations (same values, same mass)."""
    flat = cam.flatten(1)
    perm = torch.stack([torch.randperm(flat.shape[1], generator=gen) for _ in range(flat.shape[0])])
    return flat.gather(1, perm).view_as(cam)


@torch.no_grad()
def image_figures(det: MECAMDetector, x: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
    """Every per-image figure of one batch ``x`` (B, C, *S): ``{name: (B,)}`` (see the module docstring).

    Candidate scores are ``cand/<candidate_name>`` (higher = more OOD, as the detector's score); ``ctrl/random``
    and ``ctrl/constant`` are the controls of the shipped setting; ``mecam`` is the detector's own score.
    """
    det.eval()
    out = det.net.forward_cams(x)
    f, size, n_exits = out.features, x.shape[2:], len(out.cams)
    final = out.cams[-1].flatten(2).mean(-1).float()
    res: dict[str, Tensor] = {"msp": final.softmax(1).amax(1), "pred": final.argmax(1).double()}
    res.update(feat_norm2=f.double().pow(2).sum(1), mecam=det.score(x).image_score.double())
    for e in range(n_exits):
        logits = out.cams[e].flatten(2).mean(-1).float()
        res[f"exit{e}/conf"] = logits.softmax(1).amax(1).double()
        for k, v in cam_quality(det.fused_cam(out.cams, size, [e])).items():
            res[f"exit{e}/cam_{k}"] = v
    for subset in all_exit_subsets(n_exits):
        cam = det.fused_cam(out.cams, size, subset)
        if subset == tuple(range(n_exits)):
            res["fused/cam_mean"] = cam.flatten(1).double().mean(1)
            constant = cam.mean(dim=tuple(range(1, cam.ndim)), keepdim=True).expand_as(cam)
            for name, m in (("random", _shuffled(cam, gen)), ("constant", constant)):
                res[f"ctrl/{name}"] = -feature_change(f.double(), det.net.features(x * (1.0 - m)).double(), "mse")
        for s in STRENGTHS:
            g = det.net.features(x * (1.0 - s * cam))
            for change in CHANGES:
                res["cand/" + candidate_name(subset, change, s)] = -feature_change(f.double(), g.double(), change)
    return {k: v.detach().cpu().double() for k, v in res.items()}


def _auroc(id_v: np.ndarray, ood_v: np.ndarray) -> float:
    return float(auroc(np.r_[id_v, ood_v], np.r_[np.zeros(id_v.size), np.ones(ood_v.size)]))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a, b).statistic)


def set_table(fig: Mapping[str, Mapping[str, np.ndarray]], id_key: str) -> dict[str, Any]:
    """AUROCs and summaries of the figures of every set against the ID set ``id_key``.

    Returns:
        ``{"auroc": {name: {set: AUROC, "mean": ...}}`` for every figure (the statistic as the score, OOD
        positive), ``"means": {name: {set: mean value}}`` (the ID set included) and ``"spearman"``: over all
        images of all sets, the rank correlation of the shipped score with ``feat_norm2``, with ``msp`` and with
        each control.
    """
    oods = [k for k in fig if k != id_key]
    names = [k for k in fig[id_key] if k != "pred"]
    table = {}
    for name in names:
        row = {s: _auroc(fig[id_key][name], fig[s][name]) for s in oods}
        table[name] = {**row, "mean": float(np.mean(list(row.values())))}
    means = {n: {s: float(np.mean(fig[s][n])) for s in fig} for n in names}
    pooled = {n: np.concatenate([fig[s][n] for s in fig]) for n in ("mecam", "feat_norm2", "msp", "ctrl/random",
                                                                    "ctrl/constant")}  # fmt: skip
    rho = {n: _spearman(pooled["mecam"], pooled[n]) for n in ("feat_norm2", "msp", "ctrl/random", "ctrl/constant")}
    rho_id = {n: _spearman(fig[id_key]["mecam"], fig[id_key][n]) for n in ("feat_norm2", "msp")}
    return {"auroc": table, "means": means, "spearman": rho, "spearman_id": rho_id}


def select(fig: Mapping[str, Mapping[str, np.ndarray]], id_key: str, n_boot: int = 1000) -> dict[str, Any]:
    """:data:`RULE` applied to the ``cand/*`` figures: the best candidate, its paired difference to :data:`SHIPPED`.

    Returns:
        ``{"rule", "best", "best_mean_auroc", "shipped_mean_auroc", "difference": {difference, ci, p}, "wins",
        "ranking": the ten best [name, mean AUROC]}``.
    """
    oods = [k for k in fig if k != id_key]
    cands = [k[5:] for k in fig[id_key] if k.startswith("cand/")]
    means = {c: float(np.mean([_auroc(fig[id_key]["cand/" + c], fig[s]["cand/" + c]) for s in oods])) for c in cands}
    best = max(cands, key=lambda c: (means[c], -cands.index(c)))

    def arrays(c: str) -> tuple[np.ndarray, list[np.ndarray]]:
        return fig[id_key]["cand/" + c], [fig[s]["cand/" + c] for s in oods]

    diff = paired_mean_auroc_difference(*arrays(best), *arrays(SHIPPED), n_boot=n_boot, seed=0)
    ranking = sorted(cands, key=lambda c: -means[c])[:10]
    return {
        "rule": RULE,
        "best": best,
        "best_mean_auroc": means[best],
        "shipped_mean_auroc": means[SHIPPED],
        "difference": diff,
        "wins": best != SHIPPED and diff["ci"][0] > 0,
        "ranking": [[c, means[c]] for c in ranking],
    }
