"""``Calibration``: split-conformal thresholds from the stored healthy values, their false-alarm guarantee over many
seeded repetitions, the refusal for too-small ``n``, and old checkpoints (no raw values) still loading."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import stats

from medood.detectors.calibration import MAX_STORED, Calibration
from medood.utils.conformal import CalibrationSizeError, conformal_rank


def test_threshold_is_the_conformal_order_statistic_and_refuses_small_n() -> None:
    cal = Calibration()
    scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0] * 4)  # n = 20: k = ceil(21 * 0.95) = 20 -> the maximum
    cal.update(scores)
    t = cal.thresholds(alpha=0.05)
    assert t.score == 5.0 and t.score_rule["n"] == 20 and t.score_rule["rank"] == 20
    assert cal.thresholds(alpha=0.25).score == 4.0  # k = ceil(21 * 0.75) = 16th of sorted [1]*4 .. [5]*4
    small = Calibration()
    small.update(torch.arange(10.0))
    with pytest.raises(CalibrationSizeError, match="at least 19"):
        small.conformal(0.05)
    refused = small.thresholds(alpha=0.05)
    assert refused.score is None and "at least 19" in refused.score_rule["refused"]
    assert small.thresholds(score_percentile=90.0).score == 9.0, "legacy percentile = alpha 0.1, n 10 -> k = 10"


def test_realised_false_alarm_rate_over_many_seeded_repetitions() -> None:
    """Fresh ID draws flagged at most alpha on average, and the per-calibration rate has the Beta law the
    conformal bound promises (lognormal scores: the guarantee does not depend on the distribution)."""
    rng = np.random.default_rng(0)
    n, alpha, reps, m = 30, 0.1, 1500, 200
    k = conformal_rank(n, alpha)  # ceil(31 * 0.9) = 28
    dist = stats.lognorm(s=0.8)
    realised, exact = [], []
    cal = Calibration()
    for _ in range(reps):
        cal.update(torch.from_numpy(dist.rvs(n, random_state=rng)))
        thr = cal.thresholds(alpha=alpha).score
        realised.append(float(np.mean(dist.rvs(m, random_state=rng) > thr)))
        exact.append(float(dist.sf(thr)))  # the true false-alarm rate of this calibration
    realised_mean = float(np.mean(realised))
    expected = 1.0 - k / (n + 1)  # 0.0968
    se = float(np.std(realised) / np.sqrt(reps))
    assert realised_mean <= alpha and abs(realised_mean - expected) < 4 * se, (realised_mean, expected, se)
    # coverage: P(rate <= 1 - u) = P(F(t) >= u) with F(t) ~ Beta(k, n + 1 - k); float32 storage aside, exact
    for q in (0.05, 0.1, 0.2):
        promised = stats.beta(n + 1 - k, k).cdf(q)
        got = float(np.mean(np.array(exact) <= q))
        assert abs(got - promised) < 4 * np.sqrt(promised * (1 - promised) / reps), (q, got, promised)


def test_large_sets_keep_a_seeded_subsample_and_map_rate_is_per_voxel() -> None:
    cal = Calibration()
    cal.update(torch.arange(10.0), torch.linspace(0, 1, 3 * MAX_STORED))
    assert cal.stored("map").numel() == MAX_STORED and torch.all(cal.stored("map").diff() >= 0)
    t = cal.thresholds(alpha=0.1, map_alpha=0.01)
    assert t.map_rule["scope"] == "per-voxel marginal" and t.map_rule["n"] == MAX_STORED
    assert 0.97 < t.map < 1.0 and t.window == (t.map, 4 * t.map)


def test_old_checkpoints_without_raw_values_load_and_use_the_quantile_table(caplog) -> None:
    cal = Calibration()
    cal.update(torch.linspace(0, 1, 101))
    state = {k: v for k, v in cal.state_dict().items() if k not in ("score_values", "map_values")}
    old = Calibration()
    with caplog.at_level(logging.WARNING):
        old.load_state_dict(state, strict=True)
    assert "without raw calibration values" in caplog.text and old.stored("score").numel() == 0
    # k = ceil(102 * 0.95) = 97 of 101 -> quantile level 96 / 100 of the table
    assert old.thresholds(alpha=0.05).score == pytest.approx(cal.thresholds(alpha=0.05).score, abs=1e-6)
    with pytest.raises(CalibrationSizeError):
        old.conformal(0.001)
