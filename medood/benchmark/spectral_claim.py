"""The spectral seed's claim judged on its own host (``results.json`` ``seeds``).

Claim: spectral is above prediction uncertainty on every OOD kind, and level with or ahead of pooled Mahalanobis.
The numbers are the task's paired tests of the spectral host family (``paired_same_host[seed]["pairs"]``,
:func:`medood.benchmark.spectral_host.host_family`): the seed against ``seg_entropy@<seed>`` and
``mc_dropout@<seed>`` per test OOD kind, and the mean AUROC of spectral refitted on the bench ``id_fit`` split
against pooled Mahalanobis fitted on the same volumes.
"""

from __future__ import annotations

from typing import Any

from medood.benchmark.stats import paired_holds as _holds
from medood.benchmark.stats import paired_text as _diff

__all__ = ["UNCERTAINTY", "spectral_claim"]

#: the prediction-uncertainty baselines of the claim
UNCERTAINTY = ("seg_entropy", "mc_dropout")


def _uncertainty(pair: dict[str, Any]) -> tuple[bool | None, str]:
    """Verdict over the OOD kinds (``False``: below on any kind; ``True``: above on every kind) and its sentence."""
    verdicts = {s: _holds(d) for s, d in pair["sets"].items()}
    above = [s for s, v in verdicts.items() if v is True]
    below = [s for s, v in verdicts.items() if v is False]
    level = [s for s, v in verdicts.items() if v is None and pair["sets"][s]["ci"] == [0, 0]]
    open_ = [s for s, v in verdicts.items() if v is None and s not in level]
    holds = False if below else True if len(above) == len(verdicts) > 0 else None
    text = f"vs {pair['baseline']}: above on {len(above)} of {len(verdicts)} OOD kinds"
    if below:
        text += "; below on " + ", ".join(f"{s} ({_diff(pair['sets'][s])})" for s in below)
    if level:
        text += "; level (the same AUROC on every resample, e.g. both 100) on " + ", ".join(level)
    if open_:
        text += "; undecided (interval spans 0) on " + ", ".join(f"{s} ({_diff(pair['sets'][s])})" for s in open_)
    return holds, text


def spectral_claim(task: dict[str, Any], seed: str = "spectral") -> tuple[str, bool | None, str] | None:
    """``(our figure, holds, why)`` of the spectral claim on ``task``; ``None`` when its host family did not run.

    Holds when the seed's AUROC is above entropy's and MC dropout's on every test OOD kind (paired 95 % interval of
    the difference above 0) and the refitted spectral row's mean AUROC is at least pooled Mahalanobis's (same fit
    set). Refuted by one kind significantly below, or by the Mahalanobis bar missed; else undecided.
    """
    entry = task.get("paired_same_host", {}).get(seed)
    pairs = (entry or {}).get("pairs") or []
    own = {p["baseline"].partition("@")[0]: p for p in pairs if p["a"] == seed}
    if not all(name in own for name in UNCERTAINTY):
        return None
    means = task["mean_auroc"]
    texts = [f"mean AUROC {seed} {100 * means[seed]:.1f}"]
    verdicts = []
    for name in UNCERTAINTY:
        holds, text = _uncertainty(own[name])
        verdicts.append(holds)
        texts.append(text)
    refit = next((p for p in pairs if p["a"] != seed and p["baseline"].startswith("mahalanobis_pool@")), None)
    mahal_ok = None
    if refit is not None:
        a, b = refit["a"], refit["baseline"]
        mahal_ok = means[a] >= means[b]
        texts.append(f"mean AUROC of {a} (refitted on the same ID volumes) {100 * means[a]:.1f} vs {b} "
                     f"{100 * means[b]:.1f}: difference {_diff(refit['mean'])}")  # fmt: skip
    unc = False if False in verdicts else True if all(v is True for v in verdicts) else None
    holds = False if unc is False or mahal_ok is False else True if unc and mahal_ok else None
    why = [{True: "above entropy and MC dropout on every OOD kind", False: "significantly below entropy or MC dropout "
            "on at least one OOD kind", None: "not significantly above entropy or MC dropout on every OOD kind (level "
            "with one, or the paired interval spans 0, somewhere)"}[unc]]  # fmt: skip
    why.append("pooled Mahalanobis not measured" if mahal_ok is None else
               f"{'at least level with' if mahal_ok else 'below'} pooled Mahalanobis by mean AUROC")  # fmt: skip
    why.append("procedural brain volumes at 5 mm on a small CPU-trained multi-task host, not the paper's data")
    return "; ".join(texts), holds, "; ".join(why)
