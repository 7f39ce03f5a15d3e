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


def _tree(out: Path) -> dict[str, bytes]:
    got = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = json.loads(got.pop("run.json"))
    return {**got, "cases": json.dumps(manifest["cases"]).encode()}


def test_interrupted_run_resumes_with_the_unfinished_batches_only(tmp_path: Path) -> None:
    """A run stopped after its second batch (journal of 6 cases), resumed: the network sees batches 3 and 4 only
    and every file (per-detector CSVs, predictions, results table) equals an uninterrupted run's."""
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset

    net = trained_classifier(2)
    x, y = blob_images(2, 30, seed=1)
    dets = fit_many(build_detectors("msp,knn,vim,neco", net, {"knn": {"k": 5}}), net, [{"image": x, "label": y}])
    xt, yt = blob_images(2, 6, seed=2)
    xo = ood_images(2, 4, seed=3)
    items = [{"image": xt[i], "label": int(yt[i]), "case": f"id/{i}", "is_ood": 0, "ood_set": "id"} for i in range(6)]
    items += [{"image": xo[i], "label": -1, "case": f"noise/{i}", "is_ood": 1, "ood_set": "noise"} for i in range(4)]
    seen: list[int] = []
    net.register_forward_hook(lambda _m, inputs, _o: seen.append(int(inputs[0].shape[0])))

    def run(out: Path, mode: str, stop_after: int = 0) -> None:
        writer = PosthocScoreWriter(dets, out, class_names=["a", "b", "c"], run_folder=True, run_mode=mode)
        loader = DataLoader(Dataset(items), batch_size=3)
        ev = SupervisedEvaluator(torch.device("cpu"), loader, net, decollate=False, val_handlers=[writer])
        if stop_after:

            def stop(engine: SupervisedEvaluator) -> None:
                if engine.state.iteration == stop_after:
                    raise RuntimeError("killed")

            ev.add_event_handler(Events.ITERATION_COMPLETED, stop)
        ev.run()

    run(tmp_path / "clean", "new")
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "killed", "new", stop_after=2)
    assert not (tmp_path / "killed" / "predictions.csv").exists()
    assert len((tmp_path / "killed" / ".progress.rank0.jsonl").read_text().splitlines()) == 6
    seen.clear()
    run(tmp_path / "killed", "resume")
    assert seen == [3, 1], "only the batches of unfinished cases reach the network"
    assert _tree(tmp_path / "killed") == _tree(tmp_path / "clean")
    assert (tmp_path / "clean" / "results.json").is_file() and not list((tmp_path / "killed").glob(".progress*"))
