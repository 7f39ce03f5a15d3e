"""The page of ``scripts/diagnose_mecam.py`` (``docs/benchmarks/mecam_diagnosis.md``), every sentence from its JSON.

:func:`markdown` writes, per task, the end-to-end and control AUROCs, CAM quality per exit, feature change per exit,
the exit-subset x read-out table, and :func:`finding` (the limiting stage, by the thresholds below) and the choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medood.benchmark.mecam_diagnosis import CHANGES, SHIPPED, STRENGTHS
from medood.benchmark.plots import bars_png
from medood.benchmark.tables import md_table
from medood.detectors.mecam import all_exit_subsets

__all__ = ["figure_name", "finding", "markdown", "write_figures"]

#: |Spearman| of the shipped score with ||f(x)||^2 from which the page says the score reads the feature norm
NORM_RHO = 0.7
#: mean AUROC gain of the CAM's location over the better control below which the page says it adds little
LOCATION_GAIN = 0.05


#: the figure's series: (label, figure key with {e} for the exit)
FIGURE_SERIES = (
    ("CAM entropy", "exit{e}/cam_entropy"),
    ("CAM top-10 % mass", "exit{e}/cam_top10"),
    ("-MSE change (paper)", "cand/exits_{e}/mse/1.0"),
    ("-cosine change", "cand/exits_{e}/cosine/1.0"),
)


def figure_name(task: str) -> str:
    """The file name of a task's figure (next to the page)."""
    return f"mecam_diagnosis_{task}.png"


def write_figures(res: dict[str, Any], folder: Path) -> list[Path]:
    """Per task, the mean validation AUROC of the CAM statistics and the single-exit scores of every exit (PNG)."""
    out = []
    for task, t in res["tasks"].items():
        a = t["figures"]["auroc"]
        groups = {f"exit {e}": {label: a[key.format(e=e)]["mean"] for label, key in FIGURE_SERIES} for e in range(4)}
        title = f"MECAM {task}: mean validation AUROC per exit"
        out.append(bars_png(folder / figure_name(task), title, groups, ""))
    return out


def _p(v: float) -> str:
    return f"{100 * v:.1f}"


def _row(label: str, aurocs: dict[str, float], sets: list[str]) -> list[str]:
    return [label, *(_p(aurocs[s]) for s in sets), f"**{_p(aurocs['mean'])}**"]


def _setting(t: dict[str, Any]) -> str:
    b = t.get("bundle_setting", {"exits": t.get("exits"), "change": "mse", "cam_grid": "input"})
    return f"exits {b['exits']}, change {b['change']}, cam_grid {b['cam_grid']}"


def _premise_sets(a: dict[str, Any], sets: list[str], e: int) -> list[str]:
    """The sets on which exit ``e``'s CAM is less focused for OOD: higher entropy AND lower top-10 % mass."""
    return [s for s in sets if a[f"exit{e}/cam_entropy"][s] > 0.5 and a[f"exit{e}/cam_top10"][s] < 0.5]


def _premise(a: dict[str, Any], sets: list[str], e: int) -> str:
    holds = _premise_sets(a, sets, e)
    return f"exit {e}: {len(holds)} of {len(sets)}" + (f" ({', '.join(holds)})" if holds else "")


def finding(t: dict[str, Any]) -> dict[str, Any]:
    """The limiting stage of one task from its figures, by fixed thresholds (first match).

    ``read-out``: the shipped score follows ``||f(x)||^2`` (``|rho| >= NORM_RHO``); ``CAM``: the CAM's location adds
    less than ``LOCATION_GAIN`` mean AUROC over the better control (the same mask mass at random pixels, or a
    constant mask), or the paper's premise (OOD CAMs less focused) holds on fewer than half of the (exit, set)
    pairs; else ``classifier``.
    """
    a, rho = t["figures"]["auroc"], t["figures"]["spearman"]["feat_norm2"]
    sets = [k for k in a["mecam"] if k != "mean"]
    m = a["mecam"]["mean"]
    control = max(a["ctrl/random"]["mean"], a["ctrl/constant"]["mean"])
    premise = sum(len(_premise_sets(a, sets, e)) for e in range(4)) / (4 * len(sets))
    norm_driven, location_small = abs(rho) >= NORM_RHO, m - control < LOCATION_GAIN
    cam_stats = [k for k in a if k.startswith("exit") and "/cam_" in k]
    cam_best = max(abs(a[k]["mean"] - 0.5) for k in cam_stats) + 0.5
    if norm_driven:
        stage = "read-out"
    elif location_small or premise < 0.5:
        stage = "CAM"
    else:
        stage = "classifier"
    return {"stage": stage, "norm_driven": norm_driven, "location_small": location_small, "rho": rho,
            "premise": premise, "mecam": m, "best_control": control, "cam_best": cam_best,
            "msp": a["msp"]["mean"]}  # fmt: skip


def task_markdown(task: str, t: dict[str, Any]) -> list[str]:
    """One task's section."""
    a, means = t["figures"]["auroc"], t["figures"]["means"]
    sets = [k for k in t["n"] if k != "id_val"]
    sel, f = t["selection"], finding(t)
    lines = ["", f"## {task}", "",
             f"Bundle `{t['bundle']}` (its inference.yaml now: {_setting(t)}); final-exit accuracy on id_val "
             f"{_p(t['id_val_accuracy'])} %; images: " + ", ".join(f"{k} {v}" for k, v in t["n"].items())
             + f"; {t['seconds']:.0f} s on one thread.", "",
             "### End to end, and what the score reads (AUROC %, OOD positive; ID = id_val)", ""]  # fmt: skip
    head = ["score", *sets, "mean"]
    msp = {k: 1 - v for k, v in a["msp"].items()}
    rows = [_row("MECAM, the paper's setting (shipped before)", a["mecam"], sets),
        _row("final exit's MSP (score = -MSP)", msp, sets),
        _row("squared feature norm sum_d f(x)^2", a["feat_norm2"], sets),
        _row("control: fused CAM at random pixel locations", a["ctrl/random"], sets),
        _row("control: constant mask M = mean(M)", a["ctrl/constant"], sets),
        _row(f"chosen by the rule: {sel['best']}", a["cand/" + sel["best"]], sets)]  # fmt: skip
    lines += md_table(head, rows)
    lines += ["", f"![{task}: mean validation AUROC per exit]({figure_name(task)})", "",
              "Figure: per exit, the mean validation AUROC of its CAM's entropy and top-10 % mass (the statistic as "
              "the score) and of MECAM scored with that exit alone (-MSE, the paper's, and -cosine change); the grey "
              "line is chance."]  # fmt: skip
    sp, sp_id = t["figures"]["spearman"], t["figures"]["spearman_id"]
    lines += ["", f"Spearman correlation of the shipped score (-MSE) over all images of all sets: with ||f(x)||^2 "
              f"{sp['feat_norm2']:+.2f} (id_val alone {sp_id['feat_norm2']:+.2f}), with the final exit's MSP "
              f"{sp['msp']:+.2f} ({sp_id['msp']:+.2f}), with the random-location control {sp['ctrl/random']:+.2f}, "
              f"with the constant-mask control {sp['ctrl/constant']:+.2f}."]  # fmt: skip
    lines += ["", "### CAM quality per exit (predicted-class CAM of each exit alone; AUROC % of the statistic as "
              "the score; the ID mean in the last column)", ""]  # fmt: skip
    rows = []
    for e in range(4):
        for stat, label in (("conf", "exit confidence"), ("cam_mean", "CAM mean"), ("cam_entropy", "CAM entropy"),
                            ("cam_top10", "top-10 % mass")):  # fmt: skip
            k = f"exit{e}/{stat}"
            rows.append([f"{e}: {label}", *_row("", a[k], sets)[1:], f"{means[k]['id_val']:.3f}"])
    rows.append(["fused (0123): CAM mean", *_row("", a["fused/cam_mean"], sets)[1:],
                 f"{means['fused/cam_mean']['id_val']:.3f}"])  # fmt: skip
    lines += md_table(["exit: statistic", *sets, "mean", "ID mean value"], rows)
    lines += ["", "The paper's premise (OOD CAMs less focused: higher entropy AND lower top-10 % mass than id_val) "
              "holds on " + "; ".join(_premise(a, sets, e) for e in range(4)) + " sets."]  # fmt: skip
    lines += ["", "### Feature change per exit (MSE of the pooled last-stage features, full mask of that exit's CAM"
              " alone)", ""]  # fmt: skip
    rows = []
    for e in range(4):
        k = f"cand/exits_{e}/mse/1.0"
        mse = {s: -v for s, v in means[k].items()}
        rows.append([str(e), f"{mse['id_val']:.4f}", *(f"{mse[s]:.4f} ({_p(a[k][s])})" for s in sets)])
    lines += md_table(["exit", "mean MSE id_val", *(f"mean MSE {s} (AUROC)" for s in sets)], rows)
    k = "cand/" + SHIPPED
    holds = [s for s in sets if a[k][s] > 0.5]
    lines += ["", f"Shipped setting: the paper's direction (ID features change more than OOD ones, AUROC > 50) holds "
              f"on {len(holds)} of {len(sets)} sets" + (f" ({', '.join(holds)})" if holds else "") + "."]  # fmt: skip
    lines += ["", "### Exit subsets x read-out x mask strength (mean AUROC % over the validation OOD sets)", ""]
    combos = [(c, s) for s in STRENGTHS for c in CHANGES]
    rows = [["".join(map(str, sub)), *(_p(a[f"cand/exits_{''.join(map(str, sub))}/{c}/{s}"]["mean"])
                                       for c, s in combos)] for sub in all_exit_subsets()]  # fmt: skip
    lines += md_table(["exits", *(f"{c} s={s}" for c, s in combos)], rows)
    lines += ["", "### Finding and choice", ""]
    why = []
    if f["norm_driven"]:
        why.append(f"the shipped score follows the feature norm (Spearman {f['rho']:+.2f} with ||f(x)||^2, "
                   f"|rho| >= {NORM_RHO})")  # fmt: skip
    if f["location_small"]:
        why.append(f"the CAM's location adds little: a mask without it scores {_p(f['best_control'])} vs MECAM "
                   f"{_p(f['mecam'])} mean AUROC (the better control; a gain under {_p(LOCATION_GAIN)} "
                   "points)")  # fmt: skip
    if f["premise"] < 0.5:
        why.append(f"the paper's premise holds on {_p(f['premise'])} % of the (exit, set) pairs only")
    lines.append(f"Limiting stage: **{f['stage']}**" + (": " + "; ".join(why) if why else "") + ". "
                 "For comparison, on these sets the final exit's MSP (score -MSP) reaches mean AUROC "
                 f"{_p(1 - f['msp'])} and the per-exit CAM statistic farthest from chance {_p(f['cam_best'])} "
                 "(in its better direction).")  # fmt: skip
    if f["stage"] == "classifier":
        lines.append("No read-out or CAM setting recovers what the classifier lacks: retraining it would be next.")
    elif f["stage"] == "CAM":
        lines.append("The CAMs come from the trained exits, so a better CAM needs retraining (out of this "
                     "diagnosis); the rule below tries the settings that need none.")  # fmt: skip
    d = sel["difference"]
    lines += ["", f"Rule's choice: `{sel['best']}`, mean validation AUROC {_p(sel['best_mean_auroc'])} vs "
              f"{_p(sel['shipped_mean_auroc'])} shipped, paired difference {100 * d['difference']:+.1f} "
              f"[{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] points (p {d['p']:.3f}): "
              + ("**it replaces the shipped setting**." if sel["wins"] else "the shipped setting stays.")]  # fmt: skip
    lines += ["", "Ten best candidates: " + ", ".join(f"`{c}` {_p(v)}" for c, v in sel["ranking"]) + "."]
    return lines


def markdown(res: dict[str, Any]) -> str:
    """The page of the diagnosis JSON ``res``."""
    t0 = next(iter(res["tasks"].values()))
    corruption = list(dict.fromkeys(k for t in res["tasks"].values() for k in t["corruption_sets"]))
    lines = [
        "# MECAM per stage on validation data (issue 23)",
        "",
        f"Machine: {res['machine']}. Written by `scripts/diagnose_mecam.py`; numbers in `mecam_diagnosis.json`.",
        "",
        "Every figure here is on VALIDATION data only: each MECAM bundle's shipped weights and preprocessing score "
        "the bench ID validation images (`id_val`) against the validation OOD family of the evidence page (corruptions "
        f"{', '.join(f'`{s}`' for s in corruption)}) and, for "
        f"{', '.join(t for t, v in res['tasks'].items() if v['cross_sets'])}, against a **cross-task validation proxy "
        "for far-OOD** (`cross_<task>`: the `id_val` images of other bench tasks, none of them a test OOD kind of the "
        "task nor in its training folder). No test OOD kind and no ID test image was read. 'Shipped' below is the "
        "setting every MECAM bundle shipped before this diagnosis, the paper's: all four exits, the MSE, full mask "
        "(with the bundle's `cam_grid`).",
        "",
        "Candidates: every exit subset (0 = shallowest) x read-out (`mse`: the paper's mean squared change of the "
        "pooled last-stage features; `relative`: it over mean_d f(x)^2; `cosine`: 1 - cos(f(x), f(x'))) x mask "
        "strength s in x' = x (1 - s M); score = -change (higher = more OOD).",
        "",
        "Rule (fixed in `medood.benchmark.mecam_diagnosis.RULE`, committed before any figure): "
        + t0["selection"]["rule"],
        "",
        "Caution: the best of many candidates is chosen and compared with the shipped one on the same images, so its "
        "interval is optimistic (selection on the data it is tested on); test-kind figures of the chosen setting come "
        f"only from the evidence page, computed after this choice. {res['n_boot']} bootstrap resamples.",
    ]
    for task, t in res["tasks"].items():
        lines += task_markdown(task, t)
    return "\n".join(lines) + "\n"
