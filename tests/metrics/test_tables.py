"""medood.metrics.tables: per-set OOD metrics, the payload, its markdown and the files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medood.metrics import fpr_at_tpr
from medood.metrics.tables import (
    FPR95_CONVENTION,
    METRICS,
    ood_metrics,
    results_markdown,
    results_payload,
    results_table,
    write_results,
)


def test_metrics_use_the_literature_fpr95() -> None:
    ids, oods = torch.arange(100.0), torch.arange(90.0, 110.0)
    m = ood_metrics(ids, oods)
    scores = torch.cat([ids, oods]).numpy()
    labels = np.r_[np.zeros(100), np.ones(20)]
    assert m["fpr95"] == pytest.approx(fpr_at_tpr(scores, labels, positive="id"))
    assert m["fpr95"] == pytest.approx(5 / 20)  # 95 % of ID accepted: scores <= 94, so OOD 90..94 pass
    assert fpr_at_tpr(scores, labels, positive="ood") == pytest.approx(9 / 100), "the other convention differs"
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    perfect = ood_metrics(torch.zeros(10), torch.ones(10))
    assert perfect == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}


def test_table_payload_markdown_and_files(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    ids = {"a": torch.randn(30, generator=g), "b": torch.randn(30, generator=g)}
    oods = {
        "near": {"a": torch.randn(10, generator=g) + 1, "b": torch.randn(10, generator=g)},
        "far": {"a": torch.randn(10, generator=g) + 3, "b": torch.full((10,), math.nan)},
    }
    table = results_table(ids, oods)
    assert table["near"]["a"] == ood_metrics(ids["a"], oods["near"]["a"])
    assert all(math.isnan(v) for v in table["far"]["b"].values()), "non-finite scores give NaN metrics"
    payload = results_payload(table, task="toy", id_test_accuracy=0.5)
    assert payload["detectors"] == ["a", "b"]
    assert payload["ood_sets"] == ["near", "far"]
    assert payload["metrics"] == list(METRICS)
    assert payload["mean"]["a"]["auroc"] == pytest.approx(
        (table["near"]["a"]["auroc"] + table["far"]["a"]["auroc"]) / 2
    )
    md = results_markdown(payload, title="Toy")
    assert md.startswith("# Toy\n")
    assert "| detector | near | far | mean |" in md
    assert "- id test accuracy: 50.00 %" in md
    assert "| b | " in md
    assert "n/a" in md, "NaN cells are shown as n/a"
    js, mdp = write_results(payload, tmp_path / "out")
    assert json.loads(js.read_text())["results"]["near"]["a"] == table["near"]["a"]
    assert FPR95_CONVENTION in mdp.read_text()
