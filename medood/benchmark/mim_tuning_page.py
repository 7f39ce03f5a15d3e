"""The pages ``docs/benchmarks/mim_validation_tuning.md`` and ``mim_validation_stress.md``, from their JSON.

Written by ``scripts/tune_mim_validation.py`` (:mod:`medood.benchmark.mim_tuning`); every number comes from the JSON.
"""

from __future__ import annotations

from typing import Any

from medood.benchmark.mim_tuning import grow_of, score
from medood.benchmark.tables import fmt3 as f3
from medood.benchmark.tables import md_table

__all__ = ["grow_text", "markdown", "stress_markdown"]


def grow_text(r: dict[str, Any]) -> str:
    """A row's NLL hysteresis as ``p<percentile> x<steps>`` (``-`` without growing)."""
    g = grow_of(r)
    return "-" if g is None else f"p{g[0]:g} x{g[1]}"


def markdown(report: dict[str, Any], json_name: str) -> str:
    """A readable summary of the tuning JSON (``json_name``).

    The best setting of each flagging, the candidates re-checked on shifted volumes, the choice.
    """
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


def stress_markdown(report: dict[str, Any]) -> str:
    """The page of the stress JSON (:func:`medood.benchmark.mim_tuning.stress_rows` with its settings)."""
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
