"""medood.benchmark.mim_tuning (scripts/tune_mim_validation.py's sweep) with a stand-in detector on tiny volumes:
the flaggings swept, the rows of a sweep, the re-check on shifted volumes, the acquisition shifts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medood.benchmark.mim_tuning import (
    NLL_GROWS,
    NLL_PERCENTILES,
    STRESS,
    acquisition_shift,
    check_on_shift,
    flaggings,
    grow_of,
    same_setting,
    sweep,
)

N = 12


class _Net:
    """Stands in for MIMDetector: flags the tokens whose NLL is above ``nll_threshold`` (``atd``: the detector's
    probability above ``atd_threshold``); its post-processing is the identity inside the image."""

    atd_threshold = 0.5

    def __init__(self) -> None:
        self.fitted_nll_grow_threshold = torch.zeros(())

    def flag_scores(self, atd: torch.Tensor | None, nll: torch.Tensor) -> torch.Tensor:
        if self.flagging == "atd":
            assert atd is not None
            return atd > self.atd_threshold
        return nll > self.nll_threshold

    def postprocess_map(self, raw: torch.Tensor, x: torch.Tensor, minpool: int, avgpool: int) -> torch.Tensor:
        return raw * (x > 0)


class _Case:
    """Stands in for CachedTokens: voxel-level 'tokens'; the raw residual is the lesion plus noise."""

    def __init__(self, rng: np.random.Generator, lesion: bool) -> None:
        self.label = torch.zeros(1, N, N, N)
        if lesion:
            self.label[0, 3:7, 3:7, 3:7] = 1.0
        self.image = torch.ones(1, N, N, N)
        self.image[0, 0] = 0.0
        self.x = self.image[None]
        noise = torch.from_numpy(rng.random((1, 1, N, N, N)).astype(np.float32))
        self.residual = noise * 0.4 + self.label[None]
        self.nll = {2: self.residual[0, 0] * 10}
        self.atd = self.residual[0, 0]

    def raw(self, net: Any, flags: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input": self.residual, "gated": self.residual * flags}


def _volumes(seed: int) -> tuple[list[_Case], list[dict[str, Any]], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    cases = [_Case(rng, False), _Case(rng, False), _Case(rng, True), _Case(rng, True)]
    vols = [{"image": c.image, "label": c.label} for c in cases]
    return cases, vols[:2], vols[2:]


def test_flaggings_swept() -> None:
    with_atd, without = flaggings((2, 4), True), flaggings((2, 4), False)
    assert with_atd[: len(without)] == without and len(with_atd) - len(without) == 3 * 2 + 2
    assert len(without) == 2 * len(NLL_PERCENTILES) + len(NLL_PERCENTILES) + len(NLL_GROWS)
    assert without[0] == ("nll", 90.0, 0, 4, None) and without[-1] == ("nll", 99.5, 0, 2, (95.0, 2))
    assert with_atd[-1] == ("union", 99.5, 0, 4, None)


def test_sweep_rows_and_shift_check() -> None:
    cases, healthy, lesioned = _volumes(0)
    nll_thr = {2: {99.0: 3.9, 95.0: 3.5}}
    net = _Net()
    rows = sweep(net, cases, healthy, lesioned, ("nll", 99.0, 0, 2, (95.0, 2)), nll_thr, 99.5)
    assert len(rows) == 2 * 5 * 6 and net.atd_threshold == 0.5  # residuals x pools x reductions; restored
    assert net.nll_threshold == 3.9 and float(net.fitted_nll_grow_threshold) == 3.5
    assert (net.nll_grow_percentile, net.nll_grow_steps) == (95.0, 2) and grow_of(rows[0]) == (95.0, 2)
    flagged = [float((c.nll[2] > 3.9).float().mean()) for c in cases[:2]]
    assert rows[0]["healthy_tokens_flagged"] == pytest.approx(np.mean(flagged))
    assert sorted({r["reduction"] for r in rows}) == [
        "mean_0",
        *(f"topk_{k}" for k in ("0.0001", "0.001", "0.01", "0.03", "0.1")),
    ]
    row = next(r for r in rows if r["residual"] == "input" and r["reduction"] == "mean_0" and r["minpool"] == 1)
    means = [float(c.residual[0, 0][c.image[0] > 0].mean()) for c in cases]
    assert row["volume_auroc"] == pytest.approx(roc_auc_score([0, 0, 1, 1], means))
    hv = torch.cat([c.residual[0, 0][c.image[0] > 0] for c in cases[:2]])
    assert row["map_threshold"] == pytest.approx(float(torch.quantile(hv, 0.995)))
    gated = next(r for r in rows if r["residual"] == "gated" and r["minpool"] == 1 and r["avgpool"] == 1)
    assert gated["pixel_ap"] >= row["pixel_ap"] and gated["pixel_ap"] == pytest.approx(1.0)
    shifted, sh, sl = _volumes(1)
    candidates = [rows[0], rows[-1]]
    checked = check_on_shift(_Net(), candidates, shifted, sh, sl, nll_thr, 99.5)
    assert [same_setting(c, r) for c, r in zip(checked, candidates)] == [True, True]
    assert all(same_setting(c["shifted"], c) and c["shifted"]["map_threshold"] != c["map_threshold"] for c in checked)
    c = checked[0]
    assert c["mean_volume_auroc"] == pytest.approx((c["volume_auroc"] + c["shifted"]["volume_auroc"]) / 2)
    assert not same_setting(rows[0], {**rows[0], "nll_grow_steps": 3})


def test_acquisition_shifts_keep_the_background_and_the_scale() -> None:
    x = torch.zeros(1, 10, 10, 8)
    x[0, 2:8, 2:8, 1:7] = torch.linspace(0.2, 1.0, 216).reshape(6, 6, 6)
    for kind in STRESS:
        y = acquisition_shift(x, kind, 0)
        assert y.shape == x.shape and bool((y[x == 0] == 0).all()), kind
        assert not torch.equal(y, x), kind
    assert torch.equal(acquisition_shift(x, "noise_0.04", 1), acquisition_shift(x, "noise_0.04", 1))
    gamma = acquisition_shift(x, "gamma_2", 0)
    assert torch.corrcoef(torch.stack([gamma[x > 0], x[x > 0] ** 2]))[0, 1] > 0.999  # a rescaled x^2
    with pytest.raises(ValueError, match="warp"):
        acquisition_shift(x, "warp", 0)
