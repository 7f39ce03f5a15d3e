"""Choosing the MIM-OOD inference settings on validation volumes (``scripts/tune_mim_validation.py``).

The networks run once per volume (:class:`CachedTokens`: tokens, the in-painter's masked token NLL per number of
passes, the token detector's probabilities); each *flagging* ``(kind, value, dilation, NLL passes, grow)`` is then
decided by the detector's own ``flag_scores`` (:func:`flag_tokens`) and costs one in-painting pass and one decode;
the post-processing (residual variant, min / mean pool, volume reduction) is swept on the cached raw residuals
(:func:`sweep`). Figures of a setting: :func:`figures` (pixel AP, best Dice, Dice at the healthy ``map_percentile``
threshold, per-case AP) and :func:`reduction_aurocs`. Choice: :func:`select` on clean validation, then the
candidates re-scored on shifted copies (:func:`check_on_shift`, :func:`acquisition_shift`) and :func:`choose` by
their worst case. :func:`stress_rows`: the shipped settings under each acquisition stress. Pages:
:mod:`medood.benchmark.mim_tuning_page`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import GaussianSharpen, GaussianSmooth, RandRicianNoise

from medood.benchmark.stage_maps import choose_worst_case, healthy_values, rank_worst_case, seg_figures, volume_aurocs
from medood.transforms import ScaleNonzeroPercentile
from medood.utils.reduce import reduce_map

__all__ = [
    "ATD_THRESHOLDS",
    "NLL_GROUPS",
    "NLL_GROWS",
    "NLL_PERCENTILES",
    "SHIFTS",
    "STRESS",
    "CachedTokens",
    "acquisition_shift",
    "check_on_shift",
    "choose",
    "figures",
    "flag_tokens",
    "flaggings",
    "grow_of",
    "reduction_aurocs",
    "same_setting",
    "score",
    "select",
    "selection_text",
    "stress_rows",
    "sweep",
]

logger = logging.getLogger(__name__)

NLL_PERCENTILES = (90.0, 95.0, 98.0, 99.0, 99.5, 99.9)
NLL_GROUPS = (2, 4)  # in-painter passes of the NLL flagging (cost: about one transformer pass each)
# hysteresis of the NLL flagging: (threshold percentile, lower growing percentile, growing steps)
NLL_GROWS = ((98.0, 90.0, 2), (98.0, 95.0, 2), (99.0, 90.0, 1), (99.0, 90.0, 2), (99.0, 90.0, 3), (99.0, 95.0, 2),
             (99.5, 90.0, 2), (99.5, 95.0, 2))  # fmt: skip
ATD_THRESHOLDS = (0.2, 0.5, 0.8)
RESIDUALS = ("input", "gated")
POOLS = ((1, 1), (1, 3), (3, 3), (1, 5), (3, 5))
REDUCTIONS = (("topk", 0.0001), ("topk", 0.001), ("topk", 0.01), ("topk", 0.03), ("topk", 0.1), ("mean", 0))
SHIFTS = ("gamma_0.7", "gamma_1.4", "noise_0.04", "bias_0.4", "thick_slices")
STRESS = ("sharpen", "blur", "rician_0.05", "inplane_3mm", *SHIFTS)  # --stress: each applied to every volume
SETTING_KEYS = ("flagging", "value", "mask_dilation", "nll_groups", "residual", "minpool", "avgpool", "reduction")

#: ``(kind, value, mask dilation, NLL passes, (grow percentile, grow steps) or None)``
Flagging = tuple[Any, ...]


class CachedTokens:
    """Per volume: padded slices, positions, tokens, in-painter NLL per pass count, detector probabilities."""

    def __init__(self, net: Any, x: torch.Tensor, with_atd: bool, groups: tuple[int, ...] = NLL_GROUPS) -> None:
        self.x = torch.as_tensor(x).float()[None]
        slices, self.positions, self.index = net.slices_of(self.x)
        self.slices, self.hw = net.pad_slices(slices)
        b = net.slice_batch
        parts = [(self.slices[i : i + b], self.positions[i : i + b]) for i in range(0, len(self.slices), b)]
        self.nll: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            self.tokens = torch.cat([net.tokenize(s, p) for s, p in parts])
            for g in groups:
                net.nll_groups = g
                self.nll[g] = torch.cat([net.token_nll(t, p) for t, (_, p) in zip(self.tokens.split(b), parts)])
            self.atd = (
                torch.cat([net.token_anomaly(t, p) for t, (_, p) in zip(self.tokens.split(b), parts)])
                if with_atd
                else None
            )

    def raw(self, net: Any, flags: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw residual volumes (before pooling and masking) of each residual variant for the flagged tokens."""
        b = net.slice_batch
        out: dict[str, list[torch.Tensor]] = {r: [] for r in RESIDUALS}
        with torch.no_grad():
            for i in range(0, len(self.slices), b):
                s, p, t, m = (v[i : i + b] for v in (self.slices, self.positions, self.tokens, flags))
                res = (s - net.decode(net.inpaint(t, m, p))).abs().mean(1, keepdim=True)
                out["input"].append(res)
                scale = s.shape[-1] // t.shape[-1]
                out["gated"].append(res * F.interpolate(m.float()[:, None], scale_factor=scale, mode="nearest"))
        h, w = self.hw
        return {r: net.assemble(self.x, torch.cat(v)[..., :h, :w], self.index) for r, v in out.items()}


# ------------------------------------------------------------------------------------------------ figures
def figures(
    hmaps: list[torch.Tensor], lmaps: list[torch.Tensor], healthy: list, lesioned: list, map_pct: float
) -> dict[str, float]:
    """Validation figures of one setting (maps ``(1, 1, *S)`` already post-processed).

    The map threshold is the bundle's rule: the ``map_pct`` percentile of the healthy validation values (on at
    most 2^24 of them, seeded). ``healthy`` / ``lesioned`` are the volumes' dicts (``image``, ``label``).

    Returns:
        ``pixel_ap``, ``best_dice``, ``dice_at_healthy_threshold``, ``case_ap`` and ``map_threshold``.
    """
    hv = torch.from_numpy(healthy_values([m[0, 0] for m in hmaps], [h["image"][0] > 0 for h in healthy]))
    thr = float(
        torch.quantile(
            hv[torch.randperm(hv.numel(), generator=torch.Generator().manual_seed(0))[: 2**24]], map_pct / 100
        )
    )
    cases = [(m[0, 0], d["label"][0] > 0.5, d["image"][0] > 0) for m, d in zip(lmaps, lesioned)]
    fig = seg_figures(cases, thr, case_ap=True)
    return {
        "pixel_ap": fig["pixel_ap"],
        "best_dice": fig["best_dice"],
        "dice_at_healthy_threshold": fig["dice_at_threshold"],
        "case_ap": fig["case_ap"],
        "map_threshold": thr,
    }


def reduction_aurocs(hmaps: list, lmaps: list, healthy: list, lesioned: list) -> dict[str, float]:
    """Volume AUROC (lesioned positive) of each of :data:`REDUCTIONS` over the brain, named ``<kind>_<k>``."""
    scores = {
        f"{kind}_{k:g}": [float(reduce_map(m, kind, k, (d["image"] > 0)[None])) for m, d in
                          zip(hmaps + lmaps, healthy + lesioned)]
        for kind, k in REDUCTIONS
    }  # fmt: skip
    return volume_aurocs(scores, [0] * len(hmaps) + [1] * len(lmaps))


def score(r: dict[str, Any]) -> float:
    """Mean of pixel AP, best Dice, Dice at the healthy threshold and (when measured) the per-case mean AP.

    The per-case AP weighs every lesioned volume equally (the pooled figures are driven by the large lesions).
    """
    figs = [r["pixel_ap"], r["best_dice"], r["dice_at_healthy_threshold"]]
    return float(np.mean(figs + ([r["case_ap"]] if "case_ap" in r else [])))


# ------------------------------------------------------------------------------------------------ choice
def select(results: list[dict[str, Any]], slack: float, n: int = 1) -> list[dict[str, Any]]:
    """The ``n`` best settings: volume AUROC within ``slack`` of the best, then the highest :func:`score`."""
    return rank_worst_case(results, lambda r: [r], score, gate=lambda r: r["volume_auroc"], slack=slack)[:n]


def choose(checked: list[dict[str, Any]], slack: float) -> dict[str, Any]:
    """The shift-checked candidate to ship, by its worst case.

    The lower of its clean and shifted volume AUROC within ``slack`` of the best such value, then the highest
    lower of its clean and shifted :func:`score` (a shifted figure is not averaged away by a lucky clean one).
    """
    return choose_worst_case(checked, lambda c: (c, c["shifted"]), score, gate=lambda v: v["volume_auroc"],
                             slack=slack)  # fmt: skip


def selection_text(slack: float, candidates: int) -> str:
    """The selection rule of :func:`select` and :func:`choose`, as the report states it."""
    return (
        f"clean: volume AUROC within {slack} of the best, then the highest mean of pixel AP, best Dice, Dice at the "
        f"healthy threshold and per-case mean AP; the best {candidates} re-scored on the shifted volumes; chosen "
        "by the worst case: min(clean, shifted) volume AUROC within the slack of the best, then the highest "
        "min(clean, shifted) score"
    )


def grow_of(r: dict[str, Any]) -> tuple[float, int] | None:
    """The hysteresis ``(lower percentile, steps)`` of a result row, ``None`` without growing."""
    p = r.get("nll_grow_percentile")
    return None if p is None else (p, r["nll_grow_steps"])


def same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two result rows are the same flagging and post-processing."""
    return all(a[k] == b[k] for k in SETTING_KEYS) and grow_of(a) == grow_of(b)


# ------------------------------------------------------------------------------------------------ the sweep
def flaggings(groups: Sequence[int], with_atd: bool) -> list[Flagging]:
    """The flaggings swept, in order.

    NLL percentiles (with and without a dilation, with each pass count, grown by hysteresis), then (``with_atd``)
    the token detector's thresholds and the union; the last of ``groups`` is the default pass count.
    """
    out: list[Flagging] = [("nll", p, dil, groups[-1], None) for p in NLL_PERCENTILES for dil in (0, 1)]
    out += [("nll", p, 0, g, None) for p in NLL_PERCENTILES for g in groups[:-1]]
    out += [("nll", hi, 0, groups[0], (lo, steps)) for hi, lo, steps in NLL_GROWS]
    if with_atd:
        out += [("atd", t, dil, groups[-1], None) for t in ATD_THRESHOLDS for dil in (0, 1)]
        out += [("union", p, 0, groups[-1], None) for p in (98.0, 99.5)]
    return out


def flag_tokens(net: Any, c: CachedTokens, flag: Flagging, nll_thr: dict, atd: float) -> torch.Tensor:
    """The detector's own flagging decision (``MIMDetector.flag_scores``) on the cached token scores.

    The flagging ``flag`` is set on ``net`` first (``nll_thr``: ``{passes: {percentile: NLL}}``; ``atd``: the
    union's token-detector threshold).
    """
    kind, value, dil, groups, grow = flag
    net.flagging, net.mask_dilation = kind, dil
    net.atd_threshold = value if kind == "atd" else atd
    if kind != "atd":
        net.nll_threshold = nll_thr[groups][value]
        net.nll_grow_percentile, net.nll_grow_steps = grow if grow else (None, 0)
        if grow:
            net.fitted_nll_grow_threshold.fill_(nll_thr[groups][grow[0]])
    return net.flag_scores(c.atd, c.nll[groups])


def sweep(
    net: Any,
    cases: list[CachedTokens],
    healthy: list,
    lesioned: list,
    flag: Flagging,
    nll_thr: dict,
    map_pct: float,
) -> list[dict[str, Any]]:
    """Every post-processing (:data:`RESIDUALS` x :data:`POOLS` x :data:`REDUCTIONS`) of one flagging.

    ``cases`` are the healthy volumes' then the lesioned volumes' :class:`CachedTokens`.
    """
    kind, value, dil, groups, grow = flag
    nh, raws, healthy_flagged = len(healthy), [], []
    atd = net.atd_threshold
    for i, c in enumerate(cases):
        flags = flag_tokens(net, c, flag, nll_thr, atd)
        if i < nh:
            healthy_flagged.append(float(flags.float().mean()))
        raws.append(c.raw(net, flags))
    rows = []
    for residual, pool in itertools.product(RESIDUALS, POOLS):
        maps = [net.postprocess_map(r[residual], c.x, *pool) for r, c in zip(raws, cases)]
        fig = figures(maps[:nh], maps[nh:], healthy, lesioned, map_pct)
        vol = reduction_aurocs(maps[:nh], maps[nh:], healthy, lesioned)
        for red, v in vol.items():
            rows.append({
                "flagging": kind, "value": value, "mask_dilation": dil, "nll_groups": groups, "residual": residual,
                "minpool": pool[0], "avgpool": pool[1], "reduction": red, **fig, "volume_auroc": v,
                "healthy_tokens_flagged": float(np.mean(healthy_flagged)),
                "nll_grow_percentile": grow[0] if grow else None, "nll_grow_steps": grow[1] if grow else 0,
            })  # fmt: skip
        logger.info("%s %s dil %d groups %s grow %s %s pool %s: %s vol %s", kind, value, dil, groups, grow, residual,
                    pool, fig, vol)  # fmt: skip
    net.atd_threshold = atd
    return rows


def check_on_shift(
    net: Any,
    candidates: Iterable[dict[str, Any]],
    cases: list[CachedTokens],
    healthy: list,
    lesioned: list,
    nll_thr: dict,
    map_pct: float,
) -> list[dict[str, Any]]:
    """The clean ``candidates`` re-scored on shifted volumes (each flagging swept once).

    Returns:
        Per candidate: its row with ``shifted`` (the same setting's shifted row), ``mean_score`` and
        ``mean_volume_auroc`` (clean and shifted).
    """
    candidates = list(candidates)
    checked = []
    for flag in dict.fromkeys(
        (c["flagging"], c["value"], c["mask_dilation"], c["nll_groups"], grow_of(c)) for c in candidates
    ):
        rows = sweep(net, cases, healthy, lesioned, flag, nll_thr, map_pct)
        for cand in candidates:
            for row in rows:
                if same_setting(cand, row):
                    checked.append(
                        {
                            **cand,
                            "shifted": row,
                            "mean_score": (score(cand) + score(row)) / 2,
                            "mean_volume_auroc": (cand["volume_auroc"] + row["volume_auroc"]) / 2,
                        }
                    )
    return checked


# ------------------------------------------------------------------------------------------------ shifts
def acquisition_shift(x: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """A healthy-looking acquisition shift of a preprocessed volume ``(1, H, W, D)``.

    ``kind``: ``gamma_<g>``, ``noise_<sd>``, ``bias_<strength>`` (a smooth multiplicative field), ``thick_slices``
    (4 mm slices back to 2 mm), ``sharpen``, ``blur``, ``rician_<sd>``, ``inplane_3mm``. Re-normalised like the
    bundle's preprocessing (:class:`~medood.transforms.ScaleNonzeroPercentile`); the background stays 0.

    Raises:
        ValueError: an unknown ``kind``.
    """
    brain = x > 0
    g = torch.Generator().manual_seed(seed)
    if kind.startswith("gamma"):
        y = x.clamp_min(0) ** float(kind.split("_")[1])
    elif kind.startswith("noise"):
        y = x + float(kind.split("_")[1]) * torch.randn(x.shape, generator=g)
    elif kind.startswith("bias"):  # a smooth multiplicative field: low-order polynomial in z, y, x
        grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in x.shape[1:]], indexing="ij")
        c = float(kind.split("_")[1]) * (torch.rand(6, generator=g) * 2 - 1)
        field = c[0] * grids[0] + c[1] * grids[1] + c[2] * grids[2] + c[3] * grids[0] * grids[1]
        field = field + c[4] * grids[1] ** 2 + c[5] * grids[2] ** 2
        y = x * torch.exp(field)[None]
    elif kind == "thick_slices":  # 4 mm slices: average pairs of axial slices, back to 2 mm
        d = x.shape[-1]
        y = F.interpolate(F.avg_pool3d(x[None], (1, 1, 2), ceil_mode=True), size=x.shape[1:], mode="trilinear")[0]
        y = y[..., :d]
    elif kind == "sharpen":  # a sharper scanner / reconstruction kernel
        y = torch.as_tensor(GaussianSharpen()(x))
    elif kind == "blur":
        y = torch.as_tensor(GaussianSmooth(sigma=1.0)(x))
    elif kind.startswith("rician"):  # magnitude-image noise
        noise = RandRicianNoise(prob=1.0, std=float(kind.split("_")[1]), relative=False, sample_std=False)
        noise.set_random_state(seed)
        y = torch.as_tensor(noise(x))
    elif kind == "inplane_3mm":  # acquired at 3 mm in-plane, resampled to the model's 2 mm
        y = F.interpolate(F.interpolate(x[None], scale_factor=(2 / 3, 2 / 3, 1), mode="trilinear"), size=x.shape[1:],
                          mode="trilinear")[0]  # fmt: skip
    else:
        raise ValueError(kind)
    return ScaleNonzeroPercentile()(y.clamp_min(0) * brain)


def stress_rows(net: Any, healthy: list, lesioned: list, map_pct: float) -> dict[str, dict[str, float]]:
    """The detector's own settings on the volumes with each of :data:`STRESS` applied to every volume, one at a time.

    Returns:
        ``{stress ("none" first): figures}``: :func:`figures` (the map threshold re-fitted on the stressed healthy
        volumes), the volume AUROC of the detector's own score reduction and the fraction of healthy tokens flagged.
    """

    def stressed(vols: list, kind: str) -> list:
        return [d if kind == "none" else {**d, "image": acquisition_shift(d["image"], kind, i)}
                for i, d in enumerate(vols)]  # fmt: skip

    rows = {}
    for kind in ("none", *STRESS):
        hs, ls = stressed(healthy, kind), stressed(lesioned, kind)
        cases = [CachedTokens(net, d["image"], net.flagging != "nll", (net.nll_groups,)) for d in hs + ls]
        flags = [net.flag_scores(c.atd, c.nll[net.nll_groups]) for c in cases]
        maps = [net.postprocess_map(c.raw(net, f)[net.residual], c.x, net.minpool, net.avgpool) for c, f in
                zip(cases, flags)]  # fmt: skip
        fig = figures(maps[: len(hs)], maps[len(hs) :], hs, ls, map_pct)
        s = [float(reduce_map(m, net.score_reduction, net.score_k, (d["image"] > 0)[None])) for m, d in
             zip(maps, hs + ls)]  # fmt: skip
        fig["volume_auroc"] = volume_aurocs({"v": s}, [0] * len(hs) + [1] * len(ls))["v"]
        fig["healthy_tokens_flagged"] = float(np.mean([float(f.float().mean()) for f in flags[: len(hs)]]))
        rows[kind] = fig
        logger.info("stress %s: %s", kind, fig)
    return rows
