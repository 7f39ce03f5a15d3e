"""The page of ``scripts/diagnose_heatmap.py`` (``docs/benchmarks/heatmap_diagnosis.md``), every sentence from its JSON.

Per task: the decoder's response per image set (:func:`response_table`), the target's scale (:func:`target_table`),
the image-statistics correlations, the auxiliary-mix arms with the rule's verdict (:func:`mix_table`), and the
limiting stage (:func:`finding`, also the sentence of the bundle READMEs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medood.benchmark.tables import md_table

__all__ = ["finding", "markdown", "mix_table", "response_table", "target_table"]

STAGES = {
    "generalisation": "generalisation gap (held-out ID images score far above the training images)",
    "target_scale": "target scale (the decoder paints a small fraction of |t - x|)",
    "target_definition": "target definition (an oracle painting exactly t - x would rank no better than the decoder)",
    "auxiliary_mix": "auxiliary OOD mix (another arm wins the rule)",
}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def response_table(t: dict[str, Any]) -> list[str]:
    """Mean score per image set of the shipped mix (mean over runs), with the gap figures of the held-out ID sets."""
    r = t["figures"]["both"]["response"]
    aurocs = {k: float(np.mean(v)) for k, v in t["mixes"]["both"]["set_aurocs"].items()}
    rows = []
    for k, v in r["mean"].items():
        g = r["gap"].get(k)
        gap = f"{g['ratio']:.2f} / {_pct(g['auroc'])}" if g else ""
        rows.append([k, t["n"].get(k, t["figures"]["both"]["targets"].get(k[4:], {}).get("n", "")), f"{v:.4f}",
                     gap, _pct(aurocs[k]) if k in aurocs else ""])  # fmt: skip
    return md_table(["image set", "n", "mean score (mean \\|h\\|)", "vs id_train: ratio / AUROC %",
                     "AUROC % vs id_val (mean over runs)"], rows)  # fmt: skip


def target_table(t: dict[str, Any]) -> list[str]:
    """``|t - x|`` (nearest same-class ID training image) vs the painted ``|h|`` per image set, and their AUROCs.

    The AUROCs vs ``id_val``: of an oracle painting exactly ``t - x``, and of the decoder.
    """
    f = t["figures"]["both"]
    rows = [[f"aux {k}" if src == "targets" else k, v["n"], f"{v['target']:.4f}", f"{v['painted']:.4f}",
             f"{v['ratio']:.2f}", _pct(v["target_auroc"]) if "target_auroc" in v else "",
             _pct(v["painted_auroc"]) if "painted_auroc" in v else ""]
            for src in ("targets", "val_targets") for k, v in f[src].items()]  # fmt: skip
    return md_table(["image set", "n", "mean \\|t - x\\|", "mean \\|h\\| painted", "painted / target",
                     "oracle \\|t - x\\| AUROC % vs id_val", "decoder AUROC % vs id_val"], rows)  # fmt: skip


def mix_table(t: dict[str, Any]) -> list[str]:
    """The auxiliary-mix arms: per-set AUROC of seed 0, mean over runs, paired difference to the shipped mix."""
    sets = list(t["mixes"]["both"]["sets"])
    rows = []
    for mix, m in t["mixes"].items():
        d = m.get("vs_both")
        diff = (f"{100 * d['difference']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]; runs "
                + " ".join(f"{100 * v:+.1f}" for v in d["runs"]) if d else "reference")  # fmt: skip
        runs = m["run_mean_aurocs"]
        rows.append([mix, *(_pct(m["sets"][s]["auroc"]) for s in sets),
                     f"{_pct(m['mean_auroc'])} ({_pct(min(runs))}-{_pct(max(runs))})", diff,
                     f"{np.median(m['train_seconds']):.0f}"])  # fmt: skip
    return md_table(["arm", *(f"{s} AUROC % (seed 0)" for s in sets), "mean AUROC % over runs (min-max)",
                     "mean AUROC - both [paired 95 % CI]; per run", "train s / run"], rows)  # fmt: skip


def finding(task: str, t: dict[str, Any]) -> str:
    """One sentence: the limiting stage(s) of ``task`` and the figures behind it (validation data only)."""
    f, lim = t["figures"]["both"], t["limiting"]
    gap, tg = f["response"]["gap"]["id_val"], f["targets"]
    stages = "; ".join(STAGES[s] for s in lim["stages"]) or "none of the measured stages"
    own, vim = t["mixes"]["both"]["mean_auroc"], t["vim_reference"]["mean"]
    scope = ("ahead of ViM here, so the validation OOD family does not reproduce a gap to ViM"
             if own >= vim else "behind ViM here too")  # fmt: skip
    return (
        f"Heatmap diagnosis ({task}, validation only, {len(t['mixes']['both']['run_mean_aurocs'])} seeded runs): "
        f"mean validation AUROC {_pct(own)} vs ViM on the same classifier {_pct(vim)} ({scope}); limiting stage: "
        f"{stages}. ID validation images score "
        f"{gap['ratio']:.2f}x the training images (AUROC {_pct(gap['auroc'])} % separating them); an oracle "
        "painting exactly |t - x| would reach mean "
        f"AUROC {_pct(lim['oracle_target_auroc'])} on the validation OOD sets, the decoder "
        f"{_pct(lim['decoder_auroc'])}; the decoder paints "
        + ", ".join(f"{v['ratio']:.2f} of |t - x| on {k}" for k, v in tg.items())
        + f"; arm chosen by the rule (auxiliary mix, target search): {t['chosen']} (mean validation AUROC "
        + ", ".join(f"{k} {_pct(m['mean_auroc'])}" for k, m in t["mixes"].items())
        + ")."
    )


def markdown(result: dict[str, Any]) -> str:
    """The page of the JSON of ``scripts/diagnose_heatmap.py``."""
    lines = [
        "# Heatmap-OOD per stage on VALIDATION data: which stage limits it",
        "",
        f"Generated by `{result['command']}` ({result['seconds']:.0f} s; {result['machine']}; OMP_NUM_THREADS="
        f"{result['omp_threads']}). Decoders trained as `scripts/choose_heatmap_variant.py` trains them (the "
        f"bundle's shipped detector options, its data with the validation family's corruptions held out, "
        f"{result['epochs']} epochs; decoders per run: {result['n_decoders'] or 'as shipped'}), {result['seeds']} "
        "seeded runs per arm; figures are means over the "
        "runs of the shipped mix (`both`) unless said. Scored on the bundle's ID training images (`id_train`), its "
        "own held-out `val` split (`id_heldout`), the bench `id_val` images and the validation OOD family only "
        f"(never a test OOD kind). Score = pixel mean of the channel-max |h|. Thresholds (fixed before the run): "
        f"{result['thresholds']}. Mix rule (fixed before the run): {result['rule']}",
        "",
    ]
    for task, t in result["tasks"].items():
        alternatives = "; ".join(f"nearest in {k.replace('_', ' ')}: mean {_pct(v['mean'])} ("
                                 + ", ".join(f"{s} {_pct(a)}" for s, a in v.items() if s != "mean") + ")"
                                 for k, v in t["figures"]["both"]["alternative_targets"].items())  # fmt: skip
        correlations = "; ".join(f"{k}: mean intensity {v['mean_intensity']:+.2f}, contrast {v['contrast']:+.2f}"
                                 for k, v in t["figures"]["both"]["intensity"].items())  # fmt: skip
        lines += [
            f"## {task} (`{t['bundle']}`, {t['detector_options']})",
            "",
            f"**Finding.** {finding(task, t)}",
            "",
            "### 1. Decoder response",
            "",
            *response_table(t),
            "",
            "### 2. The target's scale",
            "",
            *target_table(t),
            "",
            f"Oracles painting exactly |t - x| for other targets t, AUROC % vs id_val: {alternatives} (the decoder's "
            f"own target, nearest in features and of the same class: {_pct(t['limiting']['oracle_target_auroc'])}).",
            "",
            f"Spearman correlation of the score with image statistics: {correlations}.",
            "",
            "### 3. The auxiliary OOD mix (and the target-search arm)",
            "",
            f"Arms (auxiliary data): {t['mix_arms']}; other options: {t['arm_options']}. Training: "
            f"{t['training']}; {t['other_organ_images']} other-organ images.",
            "",
            *mix_table(t),
            "",
            f"**Choice: {t['chosen']}.** " + " ".join(f"{k}: {v}." for k, v in t["why"].items()),
            "",
        ]
    return "\n".join(lines)
