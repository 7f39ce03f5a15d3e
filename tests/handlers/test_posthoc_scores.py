"""PosthocScoreWriter in a SupervisedEvaluator: per-detector CSVs, predictions and the results table."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from monai.engines import SupervisedEvaluator

from medood.detectors.posthoc import fit_many, score_many
from medood.engines.posthoc import build_detectors
from medood.handlers.posthoc_scores import PosthocScoreWriter
from medood.metrics.tables import ood_metrics, results_markdown, write_results
from tests.helpers.class_folders import one_thread
from tests.helpers.toy import blob_images, ood_images, trained_classifier


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_score_writer_in_an_evaluator(tmp_path: Path) -> None:
    net = trained_classifier(2)
    x, y = blob_images(2, 30, seed=1)
    dets = fit_many(build_detectors("msp,odin,knn", net, {"knn": {"k": 5}}), net, [{"image": x, "label": y}])
    xt, yt = blob_images(2, 6, seed=2)
    xo = ood_images(2, 4, seed=3)
    batches = [
        {
            "image": xt,
            "label": yt,
            "case": [f"id{i}" for i in range(6)],
            "is_ood": torch.zeros(6, dtype=torch.long),
            "ood_set": ["id"] * 6,
        },
        {
            "image": xo,
            "label": torch.full((4,), -1),
            "case": [f"o{i}" for i in range(4)],
            "is_ood": torch.ones(4, dtype=torch.long),
            "ood_set": ["noise"] * 4,
        },
    ]
    writer = PosthocScoreWriter(dets, tmp_path, class_names=["a", "b", "c"], meta={"task": "toy"})
    ev = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=batches, network=net, decollate=False, val_handlers=[writer]
    )
    ev.run()
    rows = list(csv.DictReader(open(tmp_path / "odin" / "scores.csv")))
    assert [r["case"] for r in rows] == [f"id{i}" for i in range(6)] + [f"o{i}" for i in range(4)]
    assert [r["label"] for r in rows] == ["0"] * 6 + ["1"] * 4
    expected = dets["odin"].score(xo).image_score
    assert [float(r["score"]) for r in rows[6:]] == pytest.approx(expected.tolist(), rel=1e-5)
    same = score_many(dets, net, [b["image"] for b in batches]).scores
    for name in dets:
        written = [float(r["score"]) for r in csv.DictReader(open(tmp_path / name / "scores.csv"))]
        assert written == pytest.approx(same[name].tolist(), rel=1e-5), f"{name}: the handler scores as score_many"
    preds = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert {p["pred_class"] for p in preds} <= {"a", "b", "c"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "toy"
    assert results["ood_sets"] == ["noise"]
    assert results["id_test_accuracy"] == pytest.approx(float((net(xt).argmax(1) == yt).float().mean()))
    knn = [float(r["score"]) for r in csv.DictReader(open(tmp_path / "knn" / "scores.csv"))]
    expected_knn = ood_metrics(torch.tensor(knn[:6]), torch.tensor(knn[6:]))
    assert results["results"]["noise"]["knn"] == pytest.approx(expected_knn), "the table comes from the CSV scores"
    assert "| knn |" in results_markdown(results)
    write_results(results, tmp_path / "again")
    assert (tmp_path / "again" / "results.md").is_file()
