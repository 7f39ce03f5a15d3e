"""OODTableWriter: per-set metrics of an evaluator's scores (checked against scikit-learn), variant columns,
and no table without labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader, Dataset
from sklearn.metrics import roc_auc_score

from medood.engines import OODEvaluator
from medood.handlers import OODTableWriter


class MeanScore(torch.nn.Module):
    """Image scores (B,): the mean intensity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


def _run(items: list[dict], writer: OODTableWriter, decollate: bool) -> None:
    OODEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(items), batch_size=4),
                 network=MeanScore(), val_handlers=[writer], decollate=decollate).run()  # fmt: skip


@pytest.mark.parametrize("decollate", [True, False])
def test_per_set_metrics_and_variants(tmp_path: Path, decollate: bool) -> None:
    g = torch.Generator().manual_seed(0)
    levels = [("id", 0, 0.0)] * 8 + [("near", 1, 0.3)] * 5 + [("far", 1, 1.0)] * 3
    items = [{"image": torch.rand(1, 4, 4, generator=g) + shift, "is_ood": o, "ood_set": s} for s, o, shift in levels]
    writer = OODTableWriter(tmp_path, name="mean", variants=lambda x: {"neg": -x.mean(dim=(1, 2, 3))},
                            meta={"task": "toy"})  # fmt: skip
    _run(items, writer, decollate)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["ood_sets"] == ["near", "far"]
    assert res["ood_set_sizes"] == {"near": 5, "far": 3}
    assert res["n_id_test"] == 8
    assert res["task"] == "toy"
    assert set(res["detectors"]) == {"mean", "neg"}
    means = [float(it["image"].mean()) for it in items]
    for name, n0, n1 in (("near", 8, 13), ("far", 13, 16)):
        y = [0] * 8 + [1] * (n1 - n0)
        s = means[:8] + means[n0:n1]
        assert res["results"][name]["mean"]["auroc"] == pytest.approx(roc_auc_score(y, s))
        assert res["results"][name]["neg"]["auroc"] == pytest.approx(roc_auc_score(y, [-v for v in s]))
    assert res["results"]["far"]["mean"]["auroc"] == 1.0
    assert res["results"]["far"]["mean"]["fpr95"] == 0.0
    assert "| mean |" in (tmp_path / "results.md").read_text()


def test_no_table_without_labels_or_without_ood(tmp_path: Path) -> None:
    items = [{"image": torch.rand(1, 4, 4)} for _ in range(3)]
    writer = OODTableWriter(tmp_path / "a")
    _run(items, writer, True)
    assert writer.payload is None
    assert not (tmp_path / "a").exists()
    writer = OODTableWriter(tmp_path / "b")
    _run([{**it, "is_ood": 0, "ood_set": "id"} for it in items], writer, True)
    assert not (tmp_path / "b" / "results.json").exists()
