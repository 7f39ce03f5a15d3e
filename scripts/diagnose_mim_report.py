"""The JSON log and the markdown report of ``scripts/diagnose_mim.py`` (one labelled entry per run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medood.utils.io import atomic_write_text


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def entry_markdown(e: dict[str, Any]) -> list[str]:
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
    lines += [
        "",
        "End result (bundle pipeline, validation lesions vs healthy validation):",
        "",
        "| flagging | s / volume | pixel AP | best Dice | Dice @ healthy thr | slice AP | volume AUROC |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in e["end_result"].items():
        lines.append(
            f"| {mode} | {r['seconds_per_volume']:.2f} | {_f(r['pixel_ap'])} | {_f(r['best_dice'])} | "
            f"{_f(r['dice_at_healthy_threshold'])} | {_f(r['slice_ap'])} | {_f(r['volume_auroc'])} |"
        )
    return [*lines, ""]


def stage_markdown(e: dict[str, Any]) -> list[str]:
    t = e["tokens"]
    lines = [
        "",
        f"Token scores over the {t['n_tokens']} brain tokens of lesioned slices ({t['n_lesion_tokens_25']} lesion"
        f" tokens at >= 25 %, {t['n_lesion_tokens_any']} with any lesion pixel):",
        "",
        "| score | AUROC (25 %) | AP (25 %) | AUROC (any) | AP (any) |",
        "|---|---|---|---|---|",
    ]
    for k, name in (("atd", "token detector p"), ("nll", "in-painter masked NLL"), ("ar_nll", "AR token NLL")):
        r = t[f"{k}_ranking"]
        lines.append(
            f"| {name} | {_f(r['lesion_25']['auroc'])} | {_f(r['lesion_25']['ap'])} | {_f(r['lesion_any']['auroc'])}"
            f" | {_f(r['lesion_any']['ap'])} |"
        )
    lines += [
        "",
        "| flagged tokens | recall (25 %) | precision (25 %) | recall (any) | precision (any) |"
        " healthy brain tokens flagged |",
        "|---|---|---|---|---|---|",
    ]
    for k in ("atd", "nll", "union", "ar"):
        f = t[f"{k}_flags"]
        lines.append(
            f"| {k} | {_f(f['lesion_25']['recall'])} | {_f(f['lesion_25']['precision'])} | "
            f"{_f(f['lesion_any']['recall'])} | {_f(f['lesion_any']['precision'])} | {_f(f['healthy_flag_rate'])} |"
        )
    for key, what in (("atd", "token detector p"), ("nll", "in-painter NLL")):
        rows = e.get("sweeps", {}).get(key, [])
        if rows:
            lines += [
                "",
                f"Threshold sweep, {what}:",
                "",
                "| threshold | value | dilation | recall (25 %) | precision (25 %) | healthy brain tokens flagged |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['threshold']} | {r['value']:.3f} | {r['dilation']} | {_f(r['recall'])} | "
                f"{_f(r['precision'])} | {_f(r['healthy_flag_rate'])} |"
                for r in rows
            ]
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
    lines += [
        "",
        "| case | lesion | lesion tokens | recall atd | recall nll | recall union | recall AR |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in e["per_case"]:
        lines.append(
            f"| {r['case']} | {r['lesion_type']} | {r['lesion_tokens']} | {_f(r['recall_atd'])} | "
            f"{_f(r['recall_nll'])} | {_f(r['recall_union'])} | {_f(r['recall_ar'])} |"
        )
    return lines


def write_report(out: Path, entry: dict[str, Any], about: str) -> None:
    """Add ``entry`` to the JSON log ``out`` (replacing one with the same label) and rewrite the ``.md`` from it."""
    report = json.loads(out.read_text()) if out.is_file() else {"entries": []}
    report["entries"] = [e for e in report["entries"] if e["label"] != entry["label"]] + [entry]
    report["about"] = about
    atomic_write_text(out, json.dumps(report, indent=2, default=float) + "\n")
    md = [
        "# MIM-OOD per-stage diagnosis (validation lesions only)",
        "",
        report["about"],
        "",
        "| entry | flagging | pixel AP | best Dice | Dice @ healthy thr | volume AUROC | token AUROC (ATD, 25 %) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in report["entries"]:
        for mode, r in e["end_result"].items():
            md.append(
                f"| {e['label']} | {mode} | {_f(r['pixel_ap'])} | {_f(r['best_dice'])} | "
                f"{_f(r['dice_at_healthy_threshold'])} | {_f(r['volume_auroc'])} | "
                f"{_f(e['tokens']['atd_ranking']['lesion_25']['auroc']) if 'tokens' in e else '-'} |"
            )
    md.append("")
    for e in report["entries"]:
        md += entry_markdown(e)
    atomic_write_text(out.with_suffix(".md"), "\n".join(md))
