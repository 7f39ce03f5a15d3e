"""Markdown tables of the per-method benchmark pages (``docs/benchmarks/*.md``), written from their JSON.

One table writer (:func:`md_table`) and the per-task OOD table the post-hoc, MECAM and heatmap pages share
(:func:`ood_task_table`: AUROC / FPR95 per OOD set and the means over the sets, in %). The evidence page
(``docs/results.md``, :mod:`medood.benchmark.page`) has its own interval tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from medood.metrics.tables import FPR95_CONVENTION, method_standing

__all__ = [
    "LEGACY_NOTE",
    "METRICS_NOTE",
    "fmt3",
    "md_table",
    "mean_over_sets",
    "ood_task_section",
    "ood_task_table",
    "pct",
    "pct_ci",
    "set_sizes",
]

#: the metric conventions of the per-method pages' OOD tables (one sentence)
METRICS_NOTE = f"Metrics in %, OOD positive; FPR95 = {FPR95_CONVENTION}."
#: where a per-method page sends its reader for the comparison of every method with intervals (one sentence)
LEGACY_NOTE = (
    "This page is a legacy per-method benchmark: the comparison of every method on the same benchmark sets, "
    "with intervals, is `docs/results.md` (`scripts/benchmark.py`)."
)

#: ``{ood_set: {detector: {metric: value}}}``
OODTable = Mapping[str, Mapping[str, Mapping[str, float]]]


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table: the header row, the ``|---|`` rule and one line per row (cells ``str()``-ed).

    Example:
        >>> md_table(["a", "b"], [[1, "x"]])
        ['| a | b |', '|---|---|', '| 1 | x |']
    """
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def fmt3(v: Any) -> str:
    """A float with 3 decimals; anything else (``None``, a string, an int) as ``str``."""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def pct(v: float, sign: str = "") -> str:
    """A fraction in % with one decimal (``sign="+"``: always signed).

    Example:
        >>> pct(0.1234), pct(0.1234, "+")
        ('12.3', '+12.3')
    """
    return f"{100 * v:{sign}.1f}"


def pct_ci(v: float, ci: Sequence[float], sign: str = "") -> str:
    """``"v [lo, hi]"`` in % (:func:`pct`): a value and its interval.

    Example:
        >>> pct_ci(0.5, [0.25, 0.75])
        '50.0 [25.0, 75.0]'
    """
    return f"{pct(v, sign)} [{pct(ci[0], sign)}, {pct(ci[1], sign)}]"


def set_sizes(sizes: Mapping[str, Any]) -> str:
    """``"a (3), b (7)"`` from ``{set: size}``."""
    return ", ".join(f"{k} ({v})" for k, v in sizes.items())


def mean_over_sets(table: OODTable, detector: str, metric: str) -> float:
    """The mean of ``metric`` of ``detector`` over the OOD sets of ``table`` (sum over sets / number of sets)."""
    return sum(table[s][detector][metric] for s in table) / len(table)


def ood_task_table(
    table: OODTable,
    detectors: Sequence[str] | None = None,
    highlight: str | None = None,
    mean: Callable[[OODTable, str, str], float] = mean_over_sets,
) -> list[str]:
    """Per detector: ``AUROC / FPR95`` on each OOD set, then the mean AUROC and mean FPR95 over the sets (in %).

    Args:
        table: ``{ood_set: {detector: {"auroc", "fpr95", ...}}}`` (fractions).
        detectors: the rows in order (default: by mean AUROC, best first; ties keep the table's order).
        highlight: a detector written in bold (the page's method).
        mean: how the mean over the sets is taken (``mean(table, detector, metric)``).
    """
    sets = list(table)
    if detectors is None:
        detectors = sorted(table[sets[0]], key=lambda d: -mean(table, d, "auroc"))
    rows = []
    for det in detectors:
        cells = [f"{100 * table[k][det]['auroc']:.1f} / {100 * table[k][det]['fpr95']:.1f}" for k in sets]
        cells += [f"{100 * mean(table, det, 'auroc'):.1f}", f"{100 * mean(table, det, 'fpr95'):.1f}"]
        rows.append([f"**{det}**" if det == highlight else det, *cells])
    header = ["detector", *(f"{k} AUROC / FPR95" for k in sets), "mean AUROC", "mean FPR95"]
    return md_table(header, rows)


def ood_task_section(
    name: str,
    intro: str,
    table: OODTable,
    method: str | None = None,
    label: str = "",
    detectors: Sequence[str] | None = None,
    mean: Callable[[OODTable, str, str], float] = mean_over_sets,
) -> list[str]:
    """One task of a per-method page, as lines.

    ``## name``, the ``intro`` sentence, :func:`ood_task_table` (``method`` in bold) and, with a ``method``, where
    it stands (:func:`medood.metrics.tables.method_standing`, named ``label``).
    """
    lines = ["", f"## {name}", "", intro, "", *ood_task_table(table, detectors, method, mean)]
    return lines + (["", method_standing(table, method, label)] if method else [])
