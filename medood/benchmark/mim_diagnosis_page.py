"""The JSON log and the page of ``scripts/diagnose_mim.py`` (``docs/benchmarks/mim_diagnosis.*``).

One labelled entry per run (:func:`write_report`); the page (:func:`report_markdown`) is a summary table, then every
entry (:func:`entry_markdown`: settings, stage figures of :mod:`medood.benchmark.mim_diagnosis`, end results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medood.benchmark.report import write_page
from medood.benchmark.tables import fmt3 as _f
from medood.benchmark.tables import md_table

__all__ = ["entry_markdown", "report_markdown", "stage_markdown", "write_report"]


def entry_markdown(e: dict[str, Any]) -> list[str]:
    """The lines of one entry: its weights and settings, the stage figures (when measured), the end results."""
    lines = [
        f"## {e['label']}",
        "",
        f"{e['date']}; MIM weights `{e['weights']['mim']}` ({e['weights']['mim_sha256']}), AR `{e['weights']['ar']}`"
        f" ({e['weights']['ar_sha256']}), same tokenizer: {e['weights']['same_tokenizer']}. Settings: {e['settings']}."
        f" NLL threshold {e['nll_threshold']['value']:.3f} ({e['nll_threshold']['source']}). {e['machine']};"
        f" {e['seconds']:.0f} s.",
    ]
    if "tokens" in e:
        lines += stage_markdown(e)
    lines += ["", "End result (bundle pipeline, validation lesions vs healthy validation):", ""]
    header = ["flagging", "s / volume", "pixel AP", "best Dice", "Dice @ healthy thr", "slice AP", "volume AUROC"]
    figures = ("pixel_ap", "best_dice", "dice_at_healthy_threshold", "slice_ap", "volume_auroc")
    rows = [
        [mode, f"{r['seconds_per_volume']:.2f}", *(_f(r[k]) for k in figures)] for mode, r in e["end_result"].items()
    ]
    return [*lines, *md_table(header, rows), ""]


def stage_markdown(e: dict[str, Any]) -> list[str]:
    """The lines of an entry's stage figures: token scores and flags, threshold sweeps, in-painter, per case."""
    t = e["tokens"]
    lines = [
        "",
        f"Token scores over the {t['n_tokens']} brain tokens of lesioned slices ({t['n_lesion_tokens_25']} lesion"
        f" tokens at >= 25 %, {t['n_lesion_tokens_any']} with any lesion pixel):",
        "",
    ]
    rows = []
    for k, name in (("atd", "token detector p"), ("nll", "in-painter masked NLL"), ("ar_nll", "AR token NLL")):
        r = t[f"{k}_ranking"]
        rows.append([name, *(_f(r[s][m]) for s in ("lesion_25", "lesion_any") for m in ("auroc", "ap"))])
    lines += md_table(["score", "AUROC (25 %)", "AP (25 %)", "AUROC (any)", "AP (any)"], rows)
    lines.append("")
    rows = []
    for k in ("atd", "nll", "union", "ar"):
        f = t[f"{k}_flags"]
        cells = [_f(f[s][m]) for s in ("lesion_25", "lesion_any") for m in ("recall", "precision")]
        rows.append([k, *cells, _f(f["healthy_flag_rate"])])
    header = ["flagged tokens", "recall (25 %)", "precision (25 %)", "recall (any)", "precision (any)",
              "healthy brain tokens flagged"]  # fmt: skip
    lines += md_table(header, rows)
    for key, what in (("atd", "token detector p"), ("nll", "in-painter NLL")):
        rows = e.get("sweeps", {}).get(key, [])
        if rows:
            lines += ["", f"Threshold sweep, {what}:", ""]
            header = ["threshold", "value", "dilation", "recall (25 %)", "precision (25 %)",
                      "healthy brain tokens flagged"]  # fmt: skip
            lines += md_table(header, ([r["threshold"], f"{r['value']:.3f}", r["dilation"], _f(r["recall"]),
                                        _f(r["precision"]), _f(r["healthy_flag_rate"])] for r in rows))  # fmt: skip
    if "synthetic" in e:
        sy = e["synthetic"]
        lines += [
            "",
            "Token detector on synthetic anomalies of the healthy validation slices: AUROC"
            f" {_f(sy['atd_auroc_image_space'])} on the image-space generators,"
            f" {_f(sy['atd_auroc_token_space'])} on token-space corruptions.",
        ]
    if "seconds_per_volume_paired" in e:
        timing = ", ".join(f"{k} {v:.2f} s" for k, v in e["seconds_per_volume_paired"].items())
        lines += ["", f"Detector time on one healthy volume (median of 3, flaggings interleaved): {timing}."]
    lines += ["", "In-painter (all lesion tokens in-painted) and tokenizer (model-space intensities, ~[0, 1]):", ""]
    lines += [f"- {k}: {_f(v)}" for k, v in {**e["inpainter"], **e["tokenizer"]}.items()]
    lines.append("")
    header = ["case", "lesion", "lesion tokens", "recall atd", "recall nll", "recall union", "recall AR"]
    rows = [[r["case"], r["lesion_type"], r["lesion_tokens"], *(_f(r[f"recall_{k}"]) for k in ("atd", "nll", "union",
             "ar"))] for r in e["per_case"]]  # fmt: skip
    return lines + md_table(header, rows)


def report_markdown(report: dict[str, Any]) -> str:
    """The page of the whole JSON log: one summary table, then every entry."""
    md = ["# MIM-OOD per-stage diagnosis (validation lesions only)", "", report["about"], ""]
    rows = []
    for e in report["entries"]:
        token = _f(e["tokens"]["atd_ranking"]["lesion_25"]["auroc"]) if "tokens" in e else "-"
        for mode, r in e["end_result"].items():
            figures = ("pixel_ap", "best_dice", "dice_at_healthy_threshold", "volume_auroc")
            rows.append([e["label"], mode, *(_f(r[k]) for k in figures), token])
    header = ["entry", "flagging", "pixel AP", "best Dice", "Dice @ healthy thr", "volume AUROC",
              "token AUROC (ATD, 25 %)"]  # fmt: skip
    md += md_table(header, rows)
    md.append("")
    for e in report["entries"]:
        md += entry_markdown(e)
    return "\n".join(md)


def write_report(out: Path, entry: dict[str, Any], about: str) -> None:
    """Add ``entry`` to the JSON log ``out`` (replacing one with the same label) and rewrite the ``.md`` from it."""
    report = json.loads(out.read_text()) if out.is_file() else {"entries": []}
    report["entries"] = [e for e in report["entries"] if e["label"] != entry["label"]] + [entry]
    report["about"] = about
    write_page(out, report, report_markdown(report), default=float)
