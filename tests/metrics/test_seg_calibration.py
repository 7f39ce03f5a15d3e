"""ECE and reliability bins against a direct loop; OOD tables per task and set against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from medood.metrics.ood_sets import markdown_table, task_tables
from medood.metrics.seg_calibration import expected_calibration_error, reliability_bins


def _loop_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= 0) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_matches_a_direct_loop(n_bins: int) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 500)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(_loop_ece(probs, labels, n_bins))
    bins = reliability_bins(probs, labels, n_bins)
    assert bins["count"].sum() == 500 and len(bins["edges"]) == n_bins + 1


def test_ece_of_calibrated_and_overconfident_predictions() -> None:
    probs = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2)  # 80 % right at 80 % confidence: calibrated
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)
    overconfident = torch.tensor([[0.99, 0.01]] * 10, dtype=torch.float64)
    assert expected_calibration_error(overconfident, labels) == pytest.approx(0.19)
    with pytest.raises(ValueError, match="one label per row"):
        expected_calibration_error(probs, labels[:3])


def test_task_tables_against_sklearn() -> None:
    rng = np.random.default_rng(1)
    case_sets = {f"id{i}": ("t", "id") for i in range(20)} | {f"a{i}": ("t", "far") for i in range(8)}
    case_sets |= {f"u{i}": ("u", "id") for i in range(5)} | {f"v{i}": ("u", "near") for i in range(5)}
    scores = {"det": {c: float(rng.normal(1.0 if s != "id" else 0.0)) for c, (_, s) in case_sets.items()}}
    tables = task_tables(scores, case_sets)
    assert set(tables) == {"t", "u"} and set(tables["t"]) == {"far"}
    ids = [scores["det"][f"id{i}"] for i in range(20)]
    far = [scores["det"][f"a{i}"] for i in range(8)]
    y = [0] * 20 + [1] * 8
    m = tables["t"]["far"]["det"]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, ids + far))
    assert m["aupr_out"] == pytest.approx(average_precision_score(y, ids + far))
    assert m["aupr_in"] == pytest.approx(average_precision_score([1 - v for v in y], [-s for s in ids + far]))
    accepted = np.sort(ids)[int(np.ceil(0.95 * 20)) - 1]  # the threshold accepting 95 % of ID
    assert m["fpr95"] == pytest.approx(np.mean(np.array(far) <= accepted))
    assert "| t | far |" in markdown_table(tables, "auroc")
    with pytest.raises(ValueError, match="no in-distribution"):
        task_tables(scores, {"a0": ("t", "far")})
