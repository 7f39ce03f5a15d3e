"""Image-level metrics: exact values, scikit-learn agreement (with ties), FPR conventions and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from medood.metrics import aupr_in, aupr_out, auroc, average_precision, fpr_at_tpr, slice_level_metrics

ID_SCORES = [0.1, 0.2, 0.3, 0.4]
OOD_SCORES = [0.6, 0.7, 0.8, 0.9, 1.0]


def _sep() -> tuple[np.ndarray, np.ndarray]:
    return np.array(ID_SCORES + OOD_SCORES), np.array([0] * 4 + [1] * 5)


def _brute_fpr(scores: np.ndarray, is_ood: np.ndarray, tpr: float, positive: str) -> float:
    """Smallest FPR among sklearn's ROC points whose TPR reaches ``tpr``."""
    y, s = (is_ood, scores) if positive == "ood" else (1 - is_ood, -scores)
    fpr, tprs, _ = roc_curve(y, s, drop_intermediate=False)
    return float(fpr[tprs >= tpr].min())


def test_perfect_separation() -> None:
    s, y = _sep()
    assert auroc(s, y) == 1.0
    assert aupr_in(s, y) == 1.0
    assert aupr_out(s, y) == 1.0
    assert fpr_at_tpr(s, y, positive="ood") == 0.0
    assert fpr_at_tpr(s, y, positive="id") == 0.0


def test_reversed_scores() -> None:
    s, y = _sep()
    assert auroc(-s, y) == 0.0
    assert fpr_at_tpr(-s, y, positive="ood") == 1.0
    assert fpr_at_tpr(-s, y, positive="id") == 1.0


def test_input_types_agree() -> None:
    s, y = _sep()
    ref = auroc(s, y)
    assert auroc(torch.tensor(s).reshape(-1, 1), torch.tensor(y)) == ref
    assert auroc(s.tolist(), y.astype(bool).tolist()) == ref
    assert auroc(torch.tensor(s, dtype=torch.float16), torch.tensor(y)) == ref
    assert isinstance(aupr_out(torch.tensor(s), torch.tensor(y)), float)


def test_fpr_tie_handling_by_hand() -> None:
    # OOD: 0.9, 0.5 -> 95 % TPR needs both, threshold 0.5; the ID samples tied at 0.5 count as false positives.
    scores = [0.1, 0.5, 0.5, 0.5, 0.9]
    is_ood = [0, 0, 0, 1, 1]
    assert fpr_at_tpr(scores, is_ood, positive="ood") == pytest.approx(2 / 3)
    # ID positive: accept 95 % of ID = all three -> threshold 0.5 (score <= 0.5); the tied OOD 0.5 is accepted.
    assert fpr_at_tpr(scores, is_ood, positive="id") == pytest.approx(1 / 2)


def test_conventions_differ() -> None:
    # 3 of 23 ID images score above every OOD image: flagging 95 % of OOD flags those 3 ID images (3/23), but
    # accepting 95 % of ID (22 of 23) needs a threshold above every OOD image (FPR 1).
    scores = np.r_[np.linspace(0, 1, 20), 5.0, 5.0, 5.0, np.linspace(2, 3, 20)]
    is_ood = np.r_[np.zeros(23), np.ones(20)].astype(int)
    ood_pos, id_pos = fpr_at_tpr(scores, is_ood, positive="ood"), fpr_at_tpr(scores, is_ood, positive="id")
    assert ood_pos == pytest.approx(3 / 23)
    assert id_pos == 1.0
    assert ood_pos == pytest.approx(_brute_fpr(scores, is_ood, 0.95, "ood"))
    assert id_pos == pytest.approx(_brute_fpr(scores, is_ood, 0.95, "id"))
    assert ood_pos != pytest.approx(id_pos), "the two conventions should give different numbers here"


@pytest.mark.parametrize("seed", range(6))
def test_match_sklearn_seeded_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=n) + 0.7 * y, 1)  # rounding creates many ties across classes
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert aupr_out(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert aupr_in(s, y) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-6)
    for tpr in (0.95, 0.8, 0.5, 1.0):
        for positive in ("ood", "id"):
            assert fpr_at_tpr(s, y, tpr, positive) == pytest.approx(_brute_fpr(s, y, tpr, positive), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40).filter(
        lambda rows: len({b for _, b in rows}) == 2
    ),
    st.sampled_from([0.95, 0.9, 0.5, 0.33]),
)
def test_match_sklearn_property(rows: list[tuple[int, bool]], tpr: float) -> None:
    s = np.array([float(v) for v, _ in rows])
    y = np.array([int(b) for _, b in rows])
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert aupr_out(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert aupr_in(s, y) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-6)
    assert fpr_at_tpr(s, y, tpr, "ood") == pytest.approx(_brute_fpr(s, y, tpr, "ood"), abs=1e-12)
    assert fpr_at_tpr(s, y, tpr, "id") == pytest.approx(_brute_fpr(s, y, tpr, "id"), abs=1e-12)


@pytest.mark.parametrize("fn", [auroc, aupr_in, aupr_out, fpr_at_tpr, average_precision])
@pytest.mark.parametrize("label", [0, 1])
def test_one_class_raises(fn, label: int) -> None:
    with pytest.raises(ValueError, match="only one class"):
        fn([0.1, 0.2, 0.3], [label] * 3)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, float("nan"), 0.3], [0, 1, 1], "NaN"),
        ([0.1, 0.2, 0.3], [0, 1, 2], "0 \\(ID\\) or 1"),
        ([0.1, 0.2], [0, 1, 1], "differ in length"),
    ],
)
def test_bad_input_raises(scores: list, labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        auroc(scores, labels)


def test_bad_fpr_arguments() -> None:
    s, y = _sep()
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(s, y, tpr=0.0)
    with pytest.raises(ValueError, match="positive"):
        fpr_at_tpr(s, y, positive="both")  # type: ignore[arg-type]


def test_slice_level_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    has = rng.random((4, 30)) < 0.3
    scores = rng.normal(size=(4, 30)) + has
    out = slice_level_metrics(torch.tensor(scores), torch.tensor(has))
    assert set(out) == {"slice_ap", "slice_auroc"}
    assert out["slice_ap"] == pytest.approx(average_precision_score(has.ravel(), scores.ravel()), abs=1e-9)
    assert out["slice_auroc"] == pytest.approx(roc_auc_score(has.ravel(), scores.ravel()), abs=1e-9)
    with pytest.raises(ValueError, match="only one class"):
        slice_level_metrics(scores, np.zeros_like(has))


def test_million_scores_are_fast_and_exact() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(1_000_000) < 0.1
    s = (rng.normal(size=y.size) + y).astype(np.float32)
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-9)


def test_default_fpr95_is_the_literature_convention() -> None:
    """FPR95 by default = fraction of OOD samples accepted when 95 % of ID samples are accepted."""
    scores = np.r_[np.arange(20.0), [3.5, 30.0, 40.0]]  # 20 ID (0..19), 3 OOD
    is_ood = np.r_[np.zeros(20), np.ones(3)].astype(int)
    # accepting 19 of 20 ID needs threshold 18: one OOD (3.5) is accepted -> 1/3
    assert fpr_at_tpr(scores, is_ood) == pytest.approx(1 / 3)
    assert fpr_at_tpr(scores, is_ood) == fpr_at_tpr(scores, is_ood, positive="id")
