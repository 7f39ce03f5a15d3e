import math

import numpy as np
import pytest

from medood.utils.conformal import (
    CalibrationSizeError,
    conformal_rank,
    conformal_threshold,
    min_calibration_size,
)


@pytest.mark.parametrize(("alpha", "needed"), [(0.05, 19), (0.1, 9), (0.01, 99), (0.3, 3), (0.5, 1)])
def test_min_calibration_size_matches_one_over_alpha_minus_one(alpha, needed):
    assert min_calibration_size(alpha) == needed
    assert conformal_rank(needed, alpha) <= needed
    assert conformal_rank(needed - 1, alpha) > needed - 1 or needed == 1


def test_threshold_is_the_kth_smallest_score():
    scores = np.arange(1.0, 20.0)[::-1]  # 19 scores 19..1
    t = conformal_threshold(scores, 0.05)
    assert t.rank == math.ceil(20 * 0.95) == 19
    assert t.threshold == 19.0
    assert t.expected_rate == pytest.approx(1 - 19 / 20)
    t10 = conformal_threshold(np.arange(100.0), 0.1)
    assert t10.rank == math.ceil(101 * 0.9) == 91
    assert t10.threshold == 90.0


def test_refuses_too_few_cases_and_says_how_many():
    with pytest.raises(CalibrationSizeError, match="at least 19"):
        conformal_threshold(np.random.default_rng(0).normal(size=12), 0.05)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, float("nan")])
def test_rejects_bad_alpha(bad):
    with pytest.raises(ValueError, match="alpha"):
        conformal_threshold([1.0, 2.0], bad)


def test_rejects_non_finite_scores():
    with pytest.raises(ValueError, match="non-finite"):
        conformal_threshold([1.0, float("nan")] * 20, 0.1)


def test_realised_false_alarm_rate_is_guaranteed_over_many_draws():
    """Marginal guarantee: E[false-alarm rate] <= alpha, and >= alpha - 1/(n+1) for continuous scores."""
    rng = np.random.default_rng(0)
    alpha, n, reps = 0.1, 29, 4000
    cal = rng.standard_normal((reps, n))
    test = rng.standard_normal(reps)  # one fresh ID score per repetition: the marginal coverage event
    flags = np.array([test[i] > conformal_threshold(cal[i], alpha).threshold for i in range(reps)])
    rate = flags.mean()
    se = math.sqrt(alpha * (1 - alpha) / reps)
    assert rate <= alpha + 3 * se
    assert rate >= alpha - 1 / (n + 1) - 3 * se
