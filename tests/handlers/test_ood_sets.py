"""OODSetResults: the ID cases against each OOD set, metrics as medood.metrics.tables (checked on a hand case)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medood.handlers import OODSetResults


def _engine(outputs: list[dict], batch: list[dict]) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(output=outputs, batch=batch))


def test_per_set_table(tmp_path: Path) -> None:
    h = OODSetResults(tmp_path, detector="heatmap", meta={"task": "toy"})
    scores = [0.1, 0.2, 0.3, 0.9, 0.8, 0.25, 0.05]
    sets = ["id", "id", "id", "far", "far", "near", "near"]
    for s, name in zip(scores, sets):
        h._iteration(_engine([{"ood_score": torch.tensor([s])}], [{"is_ood": int(name != "id"), "ood_set": name}]))
    payload = h.write()
    far, near = payload["results"]["far"]["heatmap"], payload["results"]["near"]["heatmap"]
    assert far["auroc"] == 1.0 and far["fpr95"] == 0.0  # both far cases above every ID case
    assert near["auroc"] == pytest.approx(2 / 6)  # of the 6 (OOD, ID) pairs, 0.25 beats 0.1 and 0.2; 0.05 none
    assert payload["ood_set_sizes"] == {"far": 2, "near": 2} and payload["n_id_test"] == 3
    assert json.loads((tmp_path / "results.json").read_text())["task"] == "toy"
    assert "heatmap" in (tmp_path / "results.md").read_text()


def test_needs_both_kinds_and_labels(tmp_path: Path) -> None:
    h = OODSetResults(tmp_path)
    h._iteration(_engine([{"ood_score": torch.tensor(0.3)}], [{"is_ood": 0}]))
    with pytest.raises(ValueError, match="ID and OOD"):
        h.write()
    with pytest.raises(KeyError, match="is_ood"):
        h._iteration(_engine([{"ood_score": torch.tensor(0.3)}], [{}]))
