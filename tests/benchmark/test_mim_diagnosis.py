"""medood.benchmark.mim_diagnosis (scripts/diagnose_mim.py's stage figures) on tiny token grids with a stand-in
detector: token dilation, the flaggings, the threshold sweep, token figures and per-case recall."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sklearn.metrics import roc_auc_score

from medood.benchmark.mim_diagnosis import dilate, per_case, threshold_sweep, token_figures, token_flags


class _Net:
    """Stands in for MIMDetector: ``flag_scores`` per flagging (token detector p > 0.5, NLL > 2, or either)."""

    flagging = "nll"

    def flag_scores(self, atd: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
        return {"atd": atd > 0.5, "nll": nll > 2.0, "union": (atd > 0.5) | (nll > 2.0)}[self.flagging]


class _AR:
    threshold_nll = 3.0


def _stats(lesion: bool) -> dict[str, Any]:
    """One volume's slice stats: 2 slices of 4 x 4 tokens (2 x 2 pixels each); the lesion covers tokens (1, 1) and
    (1, 2) of slice 0 fully and a quarter of token (2, 1)."""
    frac = torch.zeros(2, 4, 4)
    px = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    if lesion:
        frac[0, 1, 1:3] = 1.0
        frac[0, 2, 1] = 0.25
        px[0, 0, 2:4, 2:6] = True
        px[0, 0, 4, 2] = True
    atd = torch.full((2, 4, 4), 0.1)
    atd[0, 1, 1] = 0.9  # the token detector finds one of the two full lesion tokens
    atd[1, 3, 3] = 0.8  # and one healthy token
    nll = torch.ones(2, 4, 4) + 2.5 * frac  # the NLL is above 2 on both full tokens, not on the quarter one
    brain = torch.ones(2, 4, 4, dtype=torch.bool)
    brain[:, 0, 0] = False
    return {"atd": atd, "nll": nll, "ar_nll": nll + 0.5 * frac, "brain": brain, "lesion_frac": frac, "lesion_px": px}


def test_dilate_tokens() -> None:
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 2, 2] = True
    assert torch.equal(dilate(mask, 0), mask)
    assert int(dilate(mask, 1).sum()) == 9 and bool(dilate(mask, 1)[0, 1:4, 1:4].all())
    assert int(dilate(mask, 2).sum()) == 25


def test_flags_sweep_and_token_figures() -> None:
    net, ar = _Net(), _AR()
    les, hea = _stats(True), _stats(False)
    flags = token_flags(net, ar, les)
    assert net.flagging == "nll"  # restored
    assert [int(flags[k].sum()) for k in ("atd", "nll", "union", "ar")] == [2, 2, 3, 2]
    rows = threshold_sweep([les], [hea], "nll", {"p90": 2.0})
    assert [(r["threshold"], r["dilation"]) for r in rows] == [("p90", 0), ("p90", 1)]
    assert rows[0]["recall"] == pytest.approx(2 / 3) and rows[0]["precision"] == 1.0  # the quarter token: NLL 1.6
    assert rows[0]["healthy_flag_rate"] == 0.0
    assert rows[1]["recall"] == 1.0 and rows[1]["precision"] == pytest.approx(3 / 11)  # 12 tokens, 1 not in brain
    fig = token_figures(net, ar, [les], [hea])
    keep = les["brain"][0]  # lesioned slices: slice 0 only
    assert fig["n_tokens"] == int(keep.sum()) == 15
    assert (fig["n_lesion_tokens_25"], fig["n_lesion_tokens_any"]) == (3, 3)
    y = (les["lesion_frac"][0][keep] >= 0.25).numpy()
    assert fig["atd_ranking"]["lesion_25"]["auroc"] == pytest.approx(roc_auc_score(y, les["atd"][0][keep].numpy()))
    atd = fig["atd_flags"]
    assert atd["lesion_25"] == {"recall": pytest.approx(1 / 3), "precision": 1.0}
    assert atd["healthy_flag_rate"] == pytest.approx(2 / 30)  # 2 of the 30 healthy brain tokens above 0.5
    rows = per_case(net, ar, [les], [{"case": "sub-1", "lesion_type": "ms"}])
    assert rows == [{"case": "sub-1", "lesion_type": "ms", "lesion_tokens": 3, "recall_atd": pytest.approx(1 / 3),
                     "recall_nll": pytest.approx(2 / 3), "recall_union": pytest.approx(2 / 3),
                     "recall_ar": pytest.approx(2 / 3)}]  # fmt: skip
