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
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import Dataset
from monai.transforms import (
    GaussianSharpen,
    GaussianSmooth,
    RandRicianNoise,
)

from medood.benchmark.bundles import bundle_parser, load_network, model_space_transform
from medood.benchmark.report import write_page
from medood.benchmark.stage_maps import (
    choose_worst_case,
    healthy_values,
    percentile_table,
    rank_worst_case,
    seg_figures,
)
from medood.benchmark.stage_maps import volume_aurocs as stage_volume_aurocs
from medood.benchmark.tables import fmt3 as f3
from medood.benchmark.tables import md_table
from medood.data.datalist import bundle_datalist
from medood.transforms import ScaleNonzeroPercentile
from medood.utils.checkpoints import load_state
from medood.utils.io import atomic_write_text
from medood.utils.machine import describe_machine
from medood.utils.reduce import reduce_map

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation"
logger = logging.getLogger("tune_mim")

NLL_PERCENTILES = (90.0, 95.0, 98.0, 99.0, 99.5, 99.9)
NLL_GROUPS = (2, 4)  # in-painter passes of the NLL flagging (cost: about one transformer pass each)
# hysteresis of the NLL flagging: (threshold percentile, lower growing percentile, growing steps)
NLL_GROWS = ((98.0, 90.0, 2), (98.0, 95.0, 2), (99.0, 90.0, 1), (99.0, 90.0, 2), (99.0, 90.0, 3), (99.0, 95.0, 2),
             (99.5, 90.0, 2), (99.5, 95.0, 2))  # fmt: skip
ATD_THRESHOLDS = (0.2, 0.5, 0.8)
RESIDUALS = ("input", "gated")
POOLS = ((1, 1), (1, 3), (3, 3), (1, 5), (3, 5))
REDUCTIONS = (("topk", 0.0001), ("topk", 0.001), ("topk", 0.01), ("topk", 0.03), ("topk", 0.1), ("mean", 0))


def load(dataset_dir: Path, parser: ConfigParser) -> tuple[list[dict], list[dict], list[dict]]:
    """Healthy training (for the NLL percentiles), healthy validation and lesioned validation volumes."""
    joint = model_space_transform(parser["pixdim"], parser["fov"], ["image"], ["label"])
    pre = parser.get_parsed_content("preprocessing")
    lesioned = list(Dataset(bundle_datalist(dataset_dir, "validation_lesion", keep=["label"]), joint))  # type: ignore[call-overload]
    healthy = list(Dataset(bundle_datalist(dataset_dir, "validation"), pre))  # type: ignore[call-overload]
    return healthy, lesioned, bundle_datalist(dataset_dir, "training")


class Cached:
    """Per volume: padded slices, positions, tokens, in-painter NLL, detector probabilities (computed once)."""

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


def figures(
    hmaps: list[torch.Tensor], lmaps: list[torch.Tensor], healthy: list, lesioned: list, map_pct: float
) -> dict[str, float]:
    """Validation figures of one setting (maps already post-processed); the map threshold is the bundle's rule,
    the ``map_pct`` percentile of the healthy validation values (on at most 2^24 of them, seeded)."""
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


def volume_aurocs(hmaps: list, lmaps: list, healthy: list, lesioned: list) -> dict[str, float]:
    scores = {
        f"{kind}_{k:g}": [float(reduce_map(m, kind, k, (d["image"] > 0)[None])) for m, d in
                          zip(hmaps + lmaps, healthy + lesioned)]
        for kind, k in REDUCTIONS
    }  # fmt: skip
    return stage_volume_aurocs(scores, [0] * len(hmaps) + [1] * len(lmaps))


def postprocess(net: Any, raw: torch.Tensor, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
    return net.postprocess_map(raw, x, pool[0], pool[1])


def score(r: dict[str, Any]) -> float:
    """Mean of pixel AP, best Dice, Dice at the healthy threshold and (when measured) the per-case mean AP, which
    weighs every lesioned volume equally (the pooled figures are driven by the large lesions)."""
    figs = [r["pixel_ap"], r["best_dice"], r["dice_at_healthy_threshold"]]
    return float(np.mean(figs + ([r["case_ap"]] if "case_ap" in r else [])))


def select(results: list[dict[str, Any]], slack: float, n: int = 1) -> list[dict[str, Any]]:
    """The ``n`` best settings: volume AUROC within ``slack`` of the best, then the highest :func:`score`."""
    return rank_worst_case(results, lambda r: [r], score, gate=lambda r: r["volume_auroc"], slack=slack)[:n]


def shift(x: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """A healthy-looking acquisition shift of a preprocessed volume ``(1, H, W, D)``, re-normalised like the
    bundle's preprocessing; the background stays 0."""
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


SHIFTS = ("gamma_0.7", "gamma_1.4", "noise_0.04", "bias_0.4", "thick_slices")
STRESS = ("sharpen", "blur", "rician_0.05", "inplane_3mm", *SHIFTS)  # --stress: each applied to every volume


def flag_tokens(net: Any, c: Cached, flag: tuple, nll_thr: dict, atd: float) -> torch.Tensor:
    """The detector's own flagging decision (``MIMDetector.flag_scores``) on the cached token scores, with the
    flagging ``(kind, value, dilation, groups, grow)`` set on it (``atd``: the union's probability threshold)."""
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
    net: Any, cases: list[Cached], healthy: list, lesioned: list, flag: tuple, nll_thr: dict, map_pct: float
) -> list[dict[str, Any]]:
    """Every post-processing of one flagging ``(kind, value, dilation, groups, grow)``."""
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
        maps = [postprocess(net, r[residual], c.x, pool) for r, c in zip(raws, cases)]
        fig = figures(maps[:nh], maps[nh:], healthy, lesioned, map_pct)
        vol = volume_aurocs(maps[:nh], maps[nh:], healthy, lesioned)
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


def same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("flagging", "value", "mask_dilation", "nll_groups", "residual", "minpool", "avgpool", "reduction")
    return all(a[k] == b[k] for k in keys) and grow_of(a) == grow_of(b)


def grow_of(r: dict[str, Any]) -> tuple[float, int] | None:
    """The hysteresis ``(lower percentile, steps)`` of a result row, ``None`` without growing."""
    p = r.get("nll_grow_percentile")
    return None if p is None else (p, r["nll_grow_steps"])


def grow_text(r: dict[str, Any]) -> str:
    g = grow_of(r)
    return "-" if g is None else f"p{g[0]:g} x{g[1]}"


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    """Write :func:`markdown` of the JSON report to ``path``."""
    atomic_write_text(path, markdown(report, path.with_suffix(".json").name))


def markdown(report: dict[str, Any], json_name: str) -> str:
    """A readable summary of the JSON report: the best setting of each flagging, the shift check, the choice."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in report["results"]:  # per flagging: the best post-processing by score, then its best volume AUROC
        key = (r["flagging"], r["value"], r["mask_dilation"], r["nll_groups"], grow_of(r))
        if key not in best or (score(r), r["volume_auroc"]) > (score(best[key]), best[key]["volume_auroc"]):
            best[key] = r
    lines = [
        "# MIM-OOD inference settings chosen on validation data",
        "",
        f"Written by `scripts/tune_mim_validation.py` ({report['machine']}, {report['seconds']:.0f} s); every row in"
        f" `{json_name}`. {report['data']}. NLL thresholds: {report['nll_threshold_source']}.",
        "",
        f"Selection: {report['selection']}.",
        "",
        "## Best post-processing of each flagging (clean validation)",
        "",
    ]
    header = ["flagging", "value", "grown into", "dilation", "NLL passes", "residual", "min/mean pool", "volume score",
              "pixel AP", "best Dice", "Dice @ healthy thr", "per-case AP", "volume AUROC",
              "healthy tokens flagged"]  # fmt: skip
    rows = [[r["flagging"], f"{r['value']:g}", grow_text(r), r["mask_dilation"],
             r["nll_groups"] if r["flagging"] != "atd" else "-", r["residual"], f"{r['minpool']}/{r['avgpool']}",
             r["reduction"], f3(r["pixel_ap"]), f3(r["best_dice"]), f3(r["dice_at_healthy_threshold"]),
             f3(r["case_ap"]) if "case_ap" in r else "-", f3(r["volume_auroc"]), f"{r['healthy_tokens_flagged']:.3f}"]
            for r in sorted(best.values(), key=score, reverse=True)]  # fmt: skip
    lines += md_table(header, rows)
    lines += ["", "## Best clean settings re-checked on shifted validation volumes", ""]
    rows = []
    for c in report["candidates_checked_on_shift"]:
        sh = c["shifted"]
        name = (f"{c['flagging']} {c['value']:g}, grow {grow_text(c)}, dil {c['mask_dilation']}, "
                f"{c['nll_groups']} passes, {c['residual']},"
                f" pool {c['minpool']}/{c['avgpool']}, {c['reduction']}")  # fmt: skip
        figs = [(f3(x["pixel_ap"]), f3(x["best_dice"]), f3(x["dice_at_healthy_threshold"]), f3(x["volume_auroc"]))
                for x in (c, sh)]  # fmt: skip
        rows.append([name, " / ".join(figs[0]), " / ".join(figs[1])])
    lines += md_table(["setting", "clean AP / Dice / Dice@thr / vol AUROC", "shifted AP / Dice / Dice@thr / vol AUROC"],
                      rows)  # fmt: skip
    sel = report["selected"]
    lines += ["", f"**Chosen**: {sel['flagging']} at p{sel['value']:g} of healthy training NLLs, grown into "
              f"{grow_text(sel)} (hysteresis), dilation "
              f"{sel['mask_dilation']}, {sel['nll_groups']} NLL passes, residual {sel['residual']}, min/mean pool "
              f"{sel['minpool']}/{sel['avgpool']}, volume score {sel['reduction']}.", ""]  # fmt: skip
    return "\n".join(lines)


def choose(checked: list[dict[str, Any]], slack: float) -> dict[str, Any]:
    """The shift-checked candidate to ship, by its worst case: the lower of its clean and shifted volume AUROC
    within ``slack`` of the best such value, then the highest lower of its clean and shifted :func:`score` (a
    shifted figure is not averaged away by a lucky clean one)."""
    return choose_worst_case(checked, lambda c: (c, c["shifted"]), score, gate=lambda v: v["volume_auroc"],
                             slack=slack)  # fmt: skip


def selection_text(slack: float, candidates: int) -> str:
    return (
        f"clean: volume AUROC within {slack} of the best, then the highest mean of pixel AP, best Dice, Dice at the "
        f"healthy threshold and per-case mean AP; the best {candidates} re-scored on the shifted volumes; chosen "
        "by the worst case: min(clean, shifted) volume AUROC within the slack of the best, then the highest "
        "min(clean, shifted) score"
    )


def stress_report(net: Any, healthy: list, lesioned: list, map_pct: float, out: Path) -> None:
    """The shipped settings (the bundle's inference.yaml) on the validation volumes with each of ``STRESS`` applied to
    every volume, one at a time: how far each figure moves under an acquisition it was not chosen on."""
    rows = {}
    for kind in ("none", *STRESS):
        hs = [d if kind == "none" else {**d, "image": shift(d["image"], kind, i)} for i, d in enumerate(healthy)]
        ls = [d if kind == "none" else {**d, "image": shift(d["image"], kind, i)} for i, d in enumerate(lesioned)]
        cases = [Cached(net, d["image"], net.flagging != "nll", (net.nll_groups,)) for d in hs + ls]
        flags = [net.flag_scores(c.atd, c.nll[net.nll_groups]) for c in cases]
        maps = [postprocess(net, c.raw(net, f)[net.residual], c.x, (net.minpool, net.avgpool)) for c, f in
                zip(cases, flags)]  # fmt: skip
        fig = figures(maps[: len(hs)], maps[len(hs) :], hs, ls, map_pct)
        s = [float(reduce_map(m, net.score_reduction, net.score_k, (d["image"] > 0)[None])) for m, d in
             zip(maps, hs + ls)]  # fmt: skip
        fig["volume_auroc"] = stage_volume_aurocs({"v": s}, [0] * len(hs) + [1] * len(ls))["v"]
        fig["healthy_tokens_flagged"] = float(np.mean([float(f.float().mean()) for f in flags[: len(hs)]]))
        rows[kind] = fig
        logger.info("stress %s: %s", kind, fig)
    report = {"settings": {k: getattr(net, k) for k in ("flagging", "nll_percentile", "nll_grow_percentile",
              "nll_grow_steps", "residual", "minpool", "avgpool", "score_k")}, "machine": describe_machine(),
              "data": "the 8 healthy validation volumes and their 8 lesioned twins, each stress applied to all 16",
              "rows": rows}  # fmt: skip
    write_page(out, report, stress_markdown(report), indent=1)


def stress_markdown(report: dict[str, Any]) -> str:
    """The page of :func:`stress_report`'s JSON."""
    lines = ["# MIM-OOD shipped settings under acquisition stress (validation volumes only)", "",
             f"Written by `scripts/tune_mim_validation.py --stress` ({report['machine']}); {report['data']}. "
             f"Settings: {report['settings']}. The map threshold is re-fitted on the stressed healthy volumes.",
             ""]  # fmt: skip
    header = ["stress", "pixel AP", "best Dice", "Dice @ healthy thr", "per-case AP", "volume AUROC",
              "healthy tokens flagged"]  # fmt: skip
    figures = ("pixel_ap", "best_dice", "dice_at_healthy_threshold", "case_ap", "volume_auroc")
    rows = [[kind, *(f3(r[k]) for k in figures), f"{r['healthy_tokens_flagged']:.3f}"]
            for kind, r in report["rows"].items()]  # fmt: skip
    return "\n".join(lines + md_table(header, rows)) + "\n"


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
    train_cached = [Cached(net, pre(c)["image"], False, groups) for c in train[: args.nll_volumes]]
    nll_thr = {g: percentile_table(torch.cat([c.nll[g].flatten() for c in train_cached]), NLL_PERCENTILES)
               for g in groups}  # fmt: skip
    del train_cached
    logger.info("healthy training token NLL percentiles: %s", nll_thr)
    cases = [Cached(net, d["image"], not args.no_atd, groups) for d in healthy + lesioned]
    flaggings: list[tuple[Any, ...]] = [("nll", p, dil, groups[-1], None) for p in NLL_PERCENTILES for dil in (0, 1)]
    flaggings += [("nll", p, 0, g, None) for p in NLL_PERCENTILES for g in groups[:-1]]
    flaggings += [("nll", hi, 0, groups[0], (lo, steps)) for hi, lo, steps in NLL_GROWS]
    if not args.no_atd:
        flaggings += [("atd", t, dil, groups[-1], None) for t in ATD_THRESHOLDS for dil in (0, 1)]
        flaggings += [("union", p, 0, groups[-1], None) for p in (98.0, 99.5)]
    results: list[dict[str, Any]] = []
    for flag in flaggings:
        results += sweep(net, cases, healthy, lesioned, flag, nll_thr, map_pct)
    # the best clean settings again on shifted copies (one shift per subject, the same for its lesioned twin)
    shifted_h = [{**d, "image": shift(d["image"], SHIFTS[i % len(SHIFTS)], i)} for i, d in enumerate(healthy)]
    shifted_l = [{**d, "image": shift(d["image"], SHIFTS[i % len(SHIFTS)], i)} for i, d in enumerate(lesioned)]
    shifted_cases = [Cached(net, d["image"], not args.no_atd, groups) for d in shifted_h + shifted_l]
    candidates = select(results, args.auroc_slack, args.candidates)
    checked = []
    for flag in dict.fromkeys(
        (c["flagging"], c["value"], c["mask_dilation"], c["nll_groups"], grow_of(c)) for c in candidates
    ):
        rows = sweep(net, shifted_cases, shifted_h, shifted_l, flag, nll_thr, map_pct)
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
