"""The page ``docs/benchmarks/mim_shift.md``, written from its JSON (:func:`medood.benchmark.mim_shift.report`).

Every number on the page comes from the JSON; older reports (fewer volume scores, no stage sections) render with
the columns and sections they measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medood.benchmark.mim_shift import MAP_ALPHA, SETS, map_score
from medood.benchmark.stage_maps import SIZE_BUCKETS
from medood.benchmark.tables import md_table
from medood.benchmark.volume_scores import VOLUME_SCORE_LABELS

__all__ = ["markdown"]

f3 = "{:.3f}".format
ROW_HEADER = "detector | prep | residual | min/mean pool | rim erosion | set | pixel AP | best Dice | Dice@thr"
HEALTHY_HEADER = (
    "detector / prep | set | tokens flagged | recon residual p99 | residual p99 | token NLL p99 | "
    "top 0.1 % in flagged | top 0.1 % on 3-voxel rim | recon / residual at top 0.1 % | volume score"
)
PER_SITE = "tokens flagged / tokenizer reconstruction residual p99 / volume score"
STAGE_HEADER = "set | case | lesion voxels | flagged | NLL > p95 | tokenizer recon residual | residual"
ALTERNATIVES_HEADER = (
    "variant | healthy brain flagged (clean / shifted) | lesion flagged (mean) | lesioned volumes < 10 % flagged | "
    "map score (clean / shifted) | volume AUROC (clean / shifted)"
)


def _slash(values: Any) -> str:
    return " / ".join(f3(x) for x in values)


def _row_lines(r: Mapping[str, Any], label: str) -> list[str]:
    """One sweep row: a table line per set (``not run`` for a set without figures)."""
    out = []
    head = f"| {label} | {r['prep']} | {r['residual']} | {r['minpool']}/{r['avgpool']} | {r['erode']} |"
    for s in SETS:
        f = r[s]
        if f is None:
            out.append(f"{head} {s} | not run |" + " |" * (3 + len(SIZE_BUCKETS)))
            continue
        per_b = []
        for b in SIZE_BUCKETS:
            x = f.get(b)
            per_b.append(
                "-"
                if x is None
                else f"{x['lesions']} / {f3(x['detected_flagged'])} / {f3(x['detected_map'])}"
                f" / {f3(x['pixel_ap'])} / {f3(x['best_dice'])} / {f3(x['dice_at_threshold'])}"
            )
        va = _slash(f["volume_auroc"].values())
        out.append(
            f"{head} {s} | {f3(f['all']['pixel_ap'])} | {f3(f['all']['best_dice'])} | "
            f"{f3(f['all']['dice_at_threshold'])} | {' | '.join(per_b)} | {va} |"
        )
    return out


def _table_head(scores: list[str]) -> list[str]:
    buckets = [f"{b}: lesions / det. flag / det. map / AP / best Dice / Dice@thr" for b in SIZE_BUCKETS]
    volume = f"volume AUROC: {' / '.join(VOLUME_SCORE_LABELS.get(k, k) for k in scores)}"
    return md_table([*ROW_HEADER.split(" | "), *buckets, volume], [])


def _shipped_and_chosen(rows_of: Mapping[str, list[Any]], scores: list[str]) -> list[str]:
    """A table of the shipped (first) and chosen rows of each detector."""
    lines = _table_head(scores)
    for det, rows in rows_of.items():
        for i, r in enumerate(rows):
            lines += _row_lines(r, f"{det} {'shipped' if i == 0 else 'chosen'}")
    return lines


def _healthy_lines(report: Mapping[str, Any]) -> list[str]:
    """Where the healthy volumes' high values come from, per detector / prep and set, then per site."""
    lines = [
        "## Where the healthy volumes' high values come from (shipped post-processing)",
        "",
        *md_table(HEALTHY_HEADER.split(" | "), []),
    ]
    sources = report.get("healthy_sources", {})
    for key, per in sources.items():
        for s, h in per.items():
            lines.append(f"| {key} | {s} | " + " | ".join(f3(x) for k, x in h.items() if k != "per_site") + " |")
    lines += ["", f"Per site (healthy volumes): {PER_SITE}", ""]
    for key, per in sources.items():
        for s, h in per.items():
            sites = "; ".join(f"{site}: {_slash(d.values())}" for site, d in h["per_site"].items())
            lines.append(f"- {key}, {s}: {sites}")
    return lines


def _stage_row(r: Mapping[str, Any]) -> list[Any]:
    keys = ("flagged", "nll_above_p95", "recon_residual", "residual")
    return [r["set"], r["case"], r["voxels"], *(f3(r[k]) for k in keys)]


def _alternative_row(name: str, a: Mapping[str, Any]) -> list[Any]:
    under = f"{a['lesions_under_10pct_flagged']} of {a['lesioned_volumes']}"
    return [name, _slash(a["healthy_flagged"].values()), f3(a["lesion_flagged_mean"]), under,
            _slash(a["map_score"].values()), _slash(a["volume_auroc"].values())]  # fmt: skip


def _stage_lines(report: Mapping[str, Any]) -> list[str]:
    """The lesion-stage and flagging-alternative sections of the page."""
    lines: list[str] = []
    st = report.get("lesion_stages")
    if st:
        lines += [
            "",
            "## Inside the lesions, stage by stage (MIM-OOD, the bundle's flagging)",
            "",
            f"Token NLL reference: 95th percentile of the clean healthy brains' token NLLs ({f3(st['nll_p95'])}). "
            "Healthy brains above it: "
            + "; ".join(f"{s} {f3(h['nll_above_p95'])} (flagged {f3(h['flagged'])})" for s, h in st["healthy"].items())
            + ". A lesion whose 'NLL > p95' fraction is at the healthy rate is as likely as healthy tissue to the "
            "in-painter: no NLL threshold flags it without flagging as much healthy brain.",
            "",
            *md_table(STAGE_HEADER.split(" | "), (_stage_row(r) for r in st["lesioned"])),
        ]
    alt = report.get("flagging_alternatives")
    if alt:
        lines += [
            "",
            "## Other flaggings / weights with the chosen post-processing (MIM-OOD)",
            "",
            *md_table(ALTERNATIVES_HEADER.split(" | "), (_alternative_row(name, a) for name, a in alt.items())),
        ]
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    """The page of a report (``docs/benchmarks/mim_shift.json``), ending in a newline."""
    first = next(iter(report["sweep"].values()))[0]  # the volume scores the report measured (older reports: fewer)
    scores = list(next(first[s] for s in SETS if first[s] is not None)["volume_auroc"])
    lines = [
        "# MIM-OOD and the AR baseline on clean and shifted-site validation volumes",
        "",
        f"Written by `scripts/bench_mim_shift.py report` ({report['machine']}, {report['seconds']:.0f} s); validation "
        "only, never the test split. clean = demo validation (healthy) + validation_lesion; shifted = `medood data "
        "shifted-site --seed 0 --subjects 12`. Map threshold: split-conformal (alpha "
        f"{MAP_ALPHA}) on the CLEAN healthy validation voxels of the same detector and setting (what the shipped "
        "calibration gives a new site). A lesion component counts as detected ('det. map') with a map voxel "
        "above that threshold, 'det. flag' with a flagged (in-painted / resampled) token.",
        "",
        f"Selection: {report['selection']}.",
        "",
        "## MIM-OOD beside the AR baseline (the same cases)",
        "",
        f"Cases: {report.get('paired_cases')}.",
        "",
        *_shipped_and_chosen(report.get("paired", {}), scores),
        "",
        "## Every cached case: the shipped setting and the chosen one, per lesion size",
        "",
        *_shipped_and_chosen(report.get("final", {}), scores),
    ]
    lines += ["", "## Fix sweep (shipped setting first, then the 6 best by worst case of clean and shifted)", ""]
    for det, rows in report["sweep"].items():
        sets = report["chosen"][det]["sets"]
        ranked = sorted(rows[1:], key=lambda r: -min(map_score(r[s]) for s in sets))[:6]
        lines += [f"### {det} (cases: {report['data']})" if det == "mim" else f"### {det}", "", *_table_head(scores)]
        for r in [rows[0], *ranked]:
            lines += _row_lines(r, det)
        lines.append("")
    lines += _healthy_lines(report)
    lines += _stage_lines(report)
    lines += ["", "## Chosen (validation only)", ""]
    for det, c in report["chosen"].items():
        lines.append(
            f"- {det}: {c['setting']}, volume score {c['volume_score']} (worst-case map score "
            f"{f3(c['worst_case_map_score'])}, worst-case volume AUROC {f3(c['worst_case_volume_auroc'])}, "
            f"on {c['sets']})"
        )
    return "\n".join(lines) + "\n"
