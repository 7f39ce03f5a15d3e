"""The MIM-OOD / AR validation sweep on cached stage volumes, clean and shifted-site (``scripts/bench_mim_shift.py``).

A *stage volume* is one case's cached :meth:`~medood.detectors.base_restoration.SliceRestorationDetector.stage_maps`
(``recon_residual``, ``residual``, ``token_nll``, ``flagged``) with its model-space ``image``, lesion ``label``
(``None`` when healthy), ``seconds``, ``case``, ``lesioned`` (0 / 1) and ``site``. A :class:`StageCache` says which
cases are cached and loads them; the script keeps them as ``.npz``
(:func:`~medood.benchmark.stage_maps.save_stage_volumes`).

* the map of a fix setting (:func:`make_map`: residual everywhere or gated by the flagged tokens, min / mean pool,
  rim erosion) and its figures on a set (:func:`figures`: pixel AP, best Dice, Dice at the threshold calibrated on
  clean healthy volumes, per size bucket, volume AUROC of every :data:`~medood.benchmark.volume_scores.VOLUME_SCORES`);
* the fix sweep (:func:`evaluate`, :data:`GRID`) and the worst-case choice over clean and shifted (:func:`choose`);
* diagnoses: where healthy high values come from (:func:`healthy_sources`), what each stage sees inside the lesions
  (:func:`lesion_stages`), other flaggings or weights (:func:`flagging_alternatives`);
* the whole report (:func:`report`), rendered by :func:`medood.benchmark.mim_shift_page.markdown`.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from scipy import ndimage as ndi

from medood.benchmark.stage_maps import (
    bucket_figures,
    choose_worst_case,
    healthy_map_threshold,
    healthy_values,
    seg_figures,
    volume_aurocs,
)
from medood.benchmark.volume_scores import VOLUME_SCORES
from medood.utils.machine import describe_machine

__all__ = [
    "GRID",
    "MAP_ALPHA",
    "SELECTION",
    "SETS",
    "SHIPPED",
    "StageCache",
    "choose",
    "evaluate",
    "figures",
    "flagging_alternatives",
    "healthy_sources",
    "lesion_stages",
    "make_map",
    "map_score",
    "report",
]

logger = logging.getLogger(__name__)

SETS = ("clean", "shifted")
MAP_ALPHA = 0.005  # voxel false-alarm rate of the calibrated map threshold (the bundle's map_percentile 99.5)
SWEEP_SAMPLE = 60_000  # voxels per lesioned volume for AP / best Dice in the sweep (the final rows use all)
#: the bundle's post-processing: residual everywhere, min-pool 1, mean-pool 5, rim erosion 1
SHIPPED = {"residual": "input", "minpool": 1, "avgpool": 5, "erode": 1}
#: the fix settings swept (besides the preprocessing)
GRID = [
    {"residual": r, "minpool": mp, "avgpool": ap, "erode": e}
    for r, (mp, ap), e in itertools.product(("input", "gated"), ((1, 5), (3, 5), (1, 3)), (1, 3))
]
FLAGGING_PREP = "nyul"  # the preprocessing of the flagging-alternative caches
SELECTION = (
    "per detector, the same budget: the map setting (preprocessing, residual inside the flagged "
    "tokens or everywhere, min/mean pool, rim erosion) with the highest min(clean, shifted) mean "
    "of pixel AP, best Dice and Dice at the threshold calibrated on the CLEAN healthy validation "
    "volumes; then the volume score with the highest min(clean, shifted) AUROC"
)

Volume = dict[str, Any]
Vols = dict[str, list[Volume]]


class StageCache(Protocol):
    """Cached stage volumes of ``(detector, preprocessing, set)``: which cases there are, and loading them."""

    def names(self, det: str, prep: str, set_name: str) -> set[str]:
        """The unique names of the cached cases."""
        ...

    def load(self, det: str, prep: str, set_name: str, names: set[str]) -> list[Volume]:
        """The stage volumes of the cases ``names`` (healthy first)."""
        ...


def _vols(cache: StageCache, det: str, prep: str, names: Mapping[str, set[str]]) -> Vols:
    return {s: cache.load(det, prep, s, names[s]) for s in SETS}


# ------------------------------------------------------------------------------------------------ one setting
def make_map(net: Any, v: Volume, setting: Mapping[str, Any]) -> torch.Tensor:
    """The anomaly map of one fix setting from the cached stages (the detector's own post-processing)."""
    raw = v["residual"] * (v["flagged"] > 0) if setting["residual"] == "gated" else v["residual"]
    erode = net.erode_mask
    net.erode_mask = setting["erode"]
    try:
        amap = net.postprocess_map(raw[None, None], v["image"][None, None], setting["minpool"], setting["avgpool"])
    finally:
        net.erode_mask = erode
    return amap[0, 0]


def figures(
    net: Any, vols: list[Volume], setting: Mapping[str, Any], thr: float | None, buckets: bool = True
) -> dict[str, Any]:
    """Map and volume figures of one setting on one set.

    Args:
        net: the detector (its ``postprocess_map`` and ``erode_mask``).
        vols: the set's stage volumes, healthy and lesioned.
        setting: the fix setting (:data:`SHIPPED` keys).
        thr: the calibrated map threshold; ``None``: fitted on this set's own healthy volumes.
        buckets: per size bucket too, on every voxel (else AP and best Dice on :data:`SWEEP_SAMPLE` voxels).

    Returns:
        ``map_threshold``, ``own_healthy_threshold`` (split-conformal at :data:`MAP_ALPHA`), ``all``
        (:func:`~medood.benchmark.stage_maps.seg_figures`), each size bucket with a lesion
        (:func:`~medood.benchmark.stage_maps.bucket_figures`) and ``volume_auroc`` of every volume score.
    """
    maps = [make_map(net, v, setting) for v in vols]
    healthy = [(m, v) for m, v in zip(maps, vols) if not v["lesioned"]]
    lesioned = [(m, v) for m, v in zip(maps, vols) if v["lesioned"]]
    hv = healthy_values([m for m, _ in healthy], [v["image"] > 0 for _, v in healthy])
    own = healthy_map_threshold(hv, MAP_ALPHA)
    thr = own if thr is None else thr
    out: dict[str, Any] = {"map_threshold": thr, "own_healthy_threshold": own}
    cases = [(m.numpy(), v["label"].numpy(), (v["image"] > 0).numpy()) for m, v in lesioned]
    out["all"] = seg_figures(cases, thr, None if buckets else SWEEP_SAMPLE)
    if buckets:
        out.update(bucket_figures(cases, thr, [v["flagged"] for _, v in lesioned]))
    scores = {k: [fn(m, v["image"] > 0, v["flagged"]) for m, v in zip(maps, vols)] for k, fn in VOLUME_SCORES.items()}
    out["volume_auroc"] = volume_aurocs(scores, [v["lesioned"] for v in vols])
    return out


def map_score(f: Mapping[str, Any]) -> float:
    """A setting's map score on one set: the mean of its pixel AP, best Dice and Dice at the threshold."""
    return float(np.mean([f["all"]["pixel_ap"], f["all"]["best_dice"], f["all"]["dice_at_threshold"]]))


# ------------------------------------------------------------------------------------------------ the sweep
def evaluate(
    net: Any, vols: Vols, settings: Iterable[Mapping[str, Any]], prep: str, buckets: bool = True
) -> list[dict[str, Any]]:
    """Figures of each setting on clean (calibrating the map threshold on its healthy volumes) and shifted.

    Returns:
        One row per setting: ``prep``, the setting, ``clean`` (``None`` without clean volumes), ``shifted``
        (:func:`figures`) and the mean ``seconds_per_volume`` of the stage maps.
    """
    rows = []
    for setting in settings:
        clean = figures(net, vols["clean"], setting, None, buckets) if vols["clean"] else None
        shifted = figures(net, vols["shifted"], setting, None if clean is None else clean["map_threshold"], buckets)
        secs = [v["seconds"] for s in SETS for v in vols[s]]
        rows.append(
            {"prep": prep, **setting, "clean": clean, "shifted": shifted, "seconds_per_volume": float(np.mean(secs))}
        )
        logger.info("%s %s: clean %s shifted %s", prep, setting, clean and clean["all"], shifted["all"])
    return rows


def choose(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Worst case of clean and shifted: the map setting (:func:`map_score`), then the volume score (its AUROC)."""
    sets = [s for s in SETS if rows[0][s] is not None]
    best = choose_worst_case(rows, lambda r: [r[s] for s in sets], map_score)
    aurocs = [best[s]["volume_auroc"] for s in sets]
    volume = choose_worst_case(list(aurocs[0]), lambda k: [a[k] for a in aurocs], float)
    return {
        "setting": {k: best[k] for k in ("prep", *SHIPPED)},
        "volume_score": volume,
        "worst_case_map_score": min(map_score(best[s]) for s in sets),
        "worst_case_volume_auroc": min(a[volume] for a in aurocs),
        "sets": sets,
    }


# ------------------------------------------------------------------------------------------------ diagnoses
def healthy_sources(net: Any, vols: list[Volume], setting: Mapping[str, Any]) -> dict[str, Any]:
    """Where the healthy volumes' high map values come from (means over the healthy volumes, and per site).

    Per volume: the fraction of brain flagged, the 99th percentiles of the stages in the brain (every 7th voxel),
    where its top 0.1 % map voxels lie (flagged, on the 3-voxel brain rim), the tokenizer reconstruction share of
    their residual, and their mean (the top-0.1 % volume score).
    """
    rows = []
    for v in (v for v in vols if not v["lesioned"]):
        brain = v["image"] > 0
        amap = make_map(net, v, setting)
        k = max(1, int(0.001 * brain.sum()))
        top = torch.zeros_like(brain)
        top.view(-1)[amap.flatten().topk(k).indices] = True
        rim = brain & ~torch.from_numpy(ndi.binary_erosion(brain.numpy(), iterations=3))
        flagged = v["flagged"] > 0
        rows.append(
            {
                "tokens_flagged": float(flagged[brain].float().mean()),
                "recon_residual_p99": float(torch.quantile(v["recon_residual"][brain][::7], 0.99)),
                "residual_p99": float(torch.quantile(v["residual"][brain][::7], 0.99)),
                "token_nll_p99": float(torch.quantile(v["token_nll"][brain][::7], 0.99)),
                "top01_in_flagged": float((top & flagged).sum() / k),
                "top01_on_rim3": float((top & rim).sum() / k),
                "top01_recon_share": float((v["recon_residual"][top]).sum() / v["residual"][top].sum().clamp_min(1e-8)),
                "volume_score_topk_0.001": float(amap[top].mean()),
            }
        )
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    sites = [v["site"] for v in vols if not v["lesioned"]]
    out["per_site"] = {
        site: {k: float(np.mean([r[k] for r, s in zip(rows, sites) if s == site])) for k in ("tokens_flagged",
               "recon_residual_p99", "volume_score_topk_0.001")}
        for site in sorted(set(sites))
    }  # fmt: skip
    return out


def lesion_stages(vols: Vols) -> dict[str, Any]:
    """Per lesioned case, what each stage sees inside the lesion (is it flagged? is its token NLL unusual?).

    ``nll_above_p95``: fraction of lesion (or healthy brain) voxels whose token NLL is above the 95th percentile of
    the CLEAN healthy validation brains' token NLLs (every 5th brain voxel): a lesion at the healthy rate is one the
    in-painter finds as likely as healthy tissue, which no threshold on the NLL can flag without flagging healthy
    tissue as often.

    Returns:
        ``nll_p95``; ``healthy``: per set the mean over healthy volumes of ``nll_above_p95`` and ``flagged`` (brain
        fractions); ``lesioned``: per lesioned case its set, case, lesion voxels, lesion fractions flagged and above
        ``nll_p95``, and the mean tokenizer reconstruction residual and residual inside the lesion.
    """
    ref = torch.cat([v["token_nll"][v["image"] > 0][::5] for v in vols["clean"] if not v["lesioned"]])
    p95 = float(torch.quantile(ref, 0.95))
    out: dict[str, Any] = {"nll_p95": p95, "healthy": {}, "lesioned": []}
    for s, vs in vols.items():
        healthy = [v for v in vs if not v["lesioned"]]
        out["healthy"][s] = {
            "nll_above_p95": float(
                np.mean([float((v["token_nll"][v["image"] > 0] > p95).float().mean()) for v in healthy])
            ),
            "flagged": float(np.mean([float((v["flagged"] > 0)[v["image"] > 0].float().mean()) for v in healthy])),
        }
        for v in (v for v in vs if v["lesioned"]):
            lab = v["label"]
            out["lesioned"].append(
                {
                    "set": s,
                    "case": v["case"],
                    "voxels": int(lab.sum()),
                    "flagged": float((v["flagged"] > 0)[lab].float().mean()),
                    "nll_above_p95": float((v["token_nll"][lab] > p95).float().mean()),
                    "recon_residual": float(v["recon_residual"][lab].mean()),
                    "residual": float(v["residual"][lab].mean()),
                }
            )
    return out


def flagging_alternatives(
    net: Any, variants: Iterable[tuple[str, Vols]], setting: Mapping[str, Any], volume_score: str, prep: str
) -> dict[str, Any]:
    """Other flaggings or weights of the MIM detector: what they flag, and the figures of ``setting`` on their maps.

    How much healthy brain and lesion each variant flags (:func:`lesion_stages`), and its map score and volume
    AUROC with ``setting`` (the post-processing of ``net``) on clean and shifted.

    Args:
        net: the detector whose post-processing makes the maps.
        variants: ``(name, stage volumes per set)``, e.g. a generator that loads one variant at a time.
        setting: the fix setting (:data:`SHIPPED` keys; others are ignored).
        volume_score: the :data:`~medood.benchmark.volume_scores.VOLUME_SCORES` name whose AUROC is reported.
        prep: the variants' preprocessing (the rows' ``prep``).
    """
    out = {}
    for name, vols in variants:
        stages = lesion_stages(vols)
        (row,) = evaluate(net, vols, [{k: setting[k] for k in SHIPPED}], prep, buckets=False)
        les = stages["lesioned"]
        out[name] = {
            "healthy_flagged": {s: h["flagged"] for s, h in stages["healthy"].items()},
            "lesion_flagged_mean": float(np.mean([r["flagged"] for r in les])),
            "lesions_under_10pct_flagged": int(sum(r["flagged"] < 0.1 for r in les)),
            "lesioned_volumes": len(les),
            "map_score": {s: map_score(row[s]) for s in SETS},
            "volume_auroc": {s: row[s]["volume_auroc"][volume_score] for s in SETS},
        }
    return out


# ------------------------------------------------------------------------------------------------ the report
def _unique(settings: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The settings without repeats (first kept)."""
    return list({json.dumps(x, sort_keys=True): x for x in settings}.values())


def _detector_rows(
    report: dict[str, Any],
    det: str,
    net: Any,
    cache: StageCache,
    preps: Sequence[str],
    shipped_prep: str,
    sweep: bool,
    flagging: Mapping[str, StageCache],
) -> None:
    """One detector's sweep, choice, final rows (and for ``mim`` the stage diagnoses), into ``report``."""
    rows = []
    for prep in preps:
        names = {s: cache.names(det, prep, s) for s in SETS}
        if not names["shifted"]:
            continue
        vols = _vols(cache, det, prep, names)
        report["data"][f"{det}_{prep}"] = {s: sorted(n) for s, n in names.items()}
        grid = [SHIPPED] + [g for g in GRID if g != SHIPPED]
        rows += evaluate(net, vols, grid if sweep else [SHIPPED], prep, buckets=not sweep)
        report.setdefault("healthy_sources", {})[f"{det}_{prep}"] = {
            s: healthy_sources(net, vols[s], SHIPPED) for s in SETS if vols[s]
        }
    if not rows:
        return
    report["sweep"][det] = rows
    report["chosen"][det] = chosen = choose(rows)
    finals = []  # the shipped and the chosen setting on every cached case, per size bucket
    for setting in _unique(({"prep": shipped_prep, **SHIPPED}, chosen["setting"])):
        prep = str(setting["prep"])
        vols = _vols(cache, det, prep, {s: cache.names(det, prep, s) for s in SETS})
        finals += evaluate(net, vols, [{k: setting[k] for k in SHIPPED}], prep)
    report.setdefault("final", {})[det] = finals
    if det == "mim":  # the stage diagnosis inside the lesions, with the bundle's weights and flagging
        names = {s: cache.names(det, shipped_prep, s) for s in SETS}
        report["lesion_stages"] = lesion_stages(_vols(cache, det, shipped_prep, names))
        if flagging:
            variants = (
                (name, _vols(c, "mim", FLAGGING_PREP, {s: c.names("mim", FLAGGING_PREP, s) for s in SETS}))
                for name, c in flagging.items()
            )
            report["flagging_alternatives"] = flagging_alternatives(
                net, variants, chosen["setting"], chosen["volume_score"], FLAGGING_PREP
            )


def report(
    detectors: Sequence[str],
    preps: Sequence[str],
    net_of: Callable[[str], Any],
    cache: StageCache,
    shipped_prep: str,
    sweep: bool = False,
    flagging: Mapping[str, StageCache] | None = None,
) -> dict[str, Any]:
    """The whole report: per detector the same fix budget on every case cached for it, then MIM beside AR.

    Args:
        detectors: detector names (``net_of`` makes each; two: also their pairing on the cases cached for both).
        preps: the preprocessings swept.
        net_of: the detector of a name, with its shipped weights.
        cache: the stage volumes.
        shipped_prep: the preprocessing of the ``shipped`` rows, of the MIM lesion stages and of the pairing.
        sweep: every :data:`GRID` setting (the sweep rows without size buckets); else the shipped one only.
        flagging: other MIM flaggings or weights, by name (:func:`flagging_alternatives`).

    Returns:
        The JSON of ``docs/benchmarks/mim_shift.json``.
    """
    start = time.perf_counter()
    out: dict[str, Any] = {"machine": describe_machine(), "data": {}, "sweep": {}, "chosen": {}, "paired": {}}
    for det in detectors:
        _detector_rows(out, det, net_of(det), cache, preps, shipped_prep, sweep, flagging or {})
    if len(detectors) == 2:  # MIM beside AR on the cases cached for both (the bundle's preprocessing)
        common = {s: set.intersection(*(cache.names(d, shipped_prep, s) for d in detectors)) for s in SETS}
        out["paired_cases"] = {s: sorted(n) for s, n in common.items()}
        for det in detectors:
            net = net_of(det)
            settings = [SHIPPED] + ([out["chosen"][det]["setting"]] if det in out["chosen"] else [])
            for setting in _unique(settings):
                prep = setting.get("prep", shipped_prep)
                vols = _vols(cache, det, prep, {s: common[s] & cache.names(det, prep, s) for s in SETS})
                fix = {k: setting[k] for k in SHIPPED}
                out["paired"].setdefault(det, []).extend(evaluate(net, vols, [fix], prep))
    out["seconds"] = time.perf_counter() - start
    out["selection"] = SELECTION
    return out
