"""medood.posthoc_eval / posthoc_classifier / PosthocScoreWriter on the toy task and tiny folders."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medood.data.errors import DataError
from medood.metrics import fpr_at_tpr
from medood.networks import find_linear_head
from medood.posthoc_classifier import build_classifier, preprocessing, to_rgb
from medood.posthoc_data import ood_datalists
from medood.posthoc_eval import (
    FPR95_CONVENTION,
    build_detectors,
    evaluate_posthoc,
    load_detectors,
    ood_metrics,
    parse_detectors,
    posthoc_detector_names,
    results_markdown,
    save_detectors,
    write_results,
)
from tests.helpers.class_folders import one_thread, write_pngs
from tests.helpers.toy import blob_images, ood_images, trained_classifier

TOY_ARGS = {"knn": {"k": 5}, "neco": {"neco_dim": 8}, "nero": {"k": 8}}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _loader(x: torch.Tensor, y: torch.Tensor | None = None, batch: int = 16) -> list:
    return [
        {"image": x[i : i + batch], **({"label": y[i : i + batch]} if y is not None else {})}
        for i in range(0, x.shape[0], batch)
    ]


def test_detector_names_are_the_posthoc_family() -> None:
    names = posthoc_detector_names()
    assert {
        "nero",
        "msp",
        "odin",
        "energy",
        "maxlogit",
        "entropy",
        "mahalanobis",
        "vim",
        "knn",
        "react",
        "gradnorm",
        "neco",
    } == set(names)
    assert parse_detectors("all") == names
    assert parse_detectors(" NERO, msp ,nero") == ["nero", "msp"]
    with pytest.raises(ValueError, match="ae"):
        parse_detectors("msp,ae")  # a trained, map-producing detector is not post-hoc


def test_metrics_use_the_literature_fpr95() -> None:
    ids, oods = torch.arange(100.0), torch.arange(90.0, 110.0)
    m = ood_metrics(ids, oods)
    scores = torch.cat([ids, oods]).numpy()
    labels = np.r_[np.zeros(100), np.ones(20)]
    assert m["fpr95"] == pytest.approx(fpr_at_tpr(scores, labels, positive="id"))
    assert m["fpr95"] == pytest.approx(5 / 20)  # 95 % of ID accepted: scores <= 94, so OOD 90..94 pass
    assert fpr_at_tpr(scores, labels, positive="ood") == pytest.approx(9 / 100), "the other convention differs"
    perfect = ood_metrics(torch.zeros(10), torch.ones(10))
    assert perfect == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}


def test_evaluate_fits_once_and_tables_every_detector(tmp_path: Path) -> None:
    net = trained_classifier(2)
    x, y = blob_images(2, 48, seed=1)
    xt, yt = blob_images(2, 24, seed=2)
    oods = {"noise": _loader(ood_images(2, 20, seed=3)), "half": _loader(ood_images(2, 12, seed=4) + xt[:12])}
    payload = evaluate_posthoc(net, _loader(x, y), _loader(xt, yt), oods, "all", TOY_ARGS, out_dir=tmp_path)
    assert payload["fpr95_convention"] == FPR95_CONVENTION
    assert payload["id_test_accuracy"] > 0.9
    assert set(payload["results"]) == {"noise", "half"}
    assert payload["ood_set_sizes"] == {"noise": 20, "half": 12}
    for table in payload["results"].values():
        assert list(table) == posthoc_detector_names()
        assert all(math.isfinite(v) for m in table.values() for v in m.values())
    assert payload["mean"]["msp"]["auroc"] == pytest.approx(
        (payload["results"]["noise"]["msp"]["auroc"] + payload["results"]["half"]["msp"]["auroc"]) / 2
    )
    assert payload["results"]["noise"]["mahalanobis"]["auroc"] > 0.9, "speckle noise is far OOD for the toy task"
    assert json.loads((tmp_path / "results.json").read_text())["results"] == payload["results"]

    md = (tmp_path / "results.md").read_text()
    assert "| detector | noise | half | mean |" in md
    assert md.count("| nero |") == 4, "one row per detector in each of the four metric tables"
    assert FPR95_CONVENTION in md

    fresh = build_detectors("all", net, TOY_ARGS)
    load_detectors(fresh, tmp_path / "detectors.pt")
    feats = {"features": net.fc.weight.new_ones(3, 16), "logits": net.fc.weight.new_ones(3, 3)}
    assert fresh["nero"].is_fitted
    assert torch.isfinite(fresh["nero"].score_features(feats).image_score).all()


def test_load_detectors_names_the_file_when_a_fit_is_missing(tmp_path: Path) -> None:
    net = trained_classifier(2)
    path = save_detectors(build_detectors("msp,odin", net), tmp_path / "d.pt")
    load_detectors(build_detectors("msp", net), path)  # detectors without a fit load fine
    with pytest.raises(DataError, match=r"d\.pt.*'knn'"):
        load_detectors(build_detectors("knn", net), path)
    with pytest.raises(ValueError, match="not evaluated"):
        build_detectors("msp", net, {"knn": {"k": 3}})


def test_ood_datalists_sets_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_pngs(tmp_path / "near" / "dye", 2, (0, 0, 200), rng)
    write_pngs(tmp_path / "near" / "tool" / "deep", 1, (9, 9, 9), rng)
    write_pngs(tmp_path / "flat", 2, (9, 9, 9), rng)
    sets = ood_datalists([tmp_path / "near", tmp_path / "flat"])
    assert {k: len(v) for k, v in sets.items()} == {"near/dye": 2, "near/tool": 1, "flat": 2}
    assert sets["near/tool"][0]["case"] == "near/tool/deep/img_00"
    assert all(e["is_ood"] == 1 for v in sets.values() for e in v)
    (tmp_path / "empty" / "kind").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty/kind: contains no images"):
        ood_datalists([tmp_path / "empty"])


def test_preprocessing_makes_rgb_of_any_input(tmp_path: Path) -> None:
    Image.fromarray(np.full((10, 14), 255, np.uint8)).save(tmp_path / "g.png")
    out = preprocessing(8)({"image": str(tmp_path / "g.png")})["image"]
    assert tuple(out.shape) == (3, 8, 8)
    assert torch.allclose(out, torch.ones_like(out))
    norm = preprocessing(8, normalize=True)({"image": str(tmp_path / "g.png")})["image"]
    assert norm[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)
    assert to_rgb(torch.zeros(4, 2, 2)).shape[0] == 3
    with pytest.raises(ValueError, match="2 channels"):
        to_rgb(torch.zeros(2, 2, 2))


@pytest.mark.parametrize("arch", ["resnet10", "densenet_small"])
def test_classifier_head_is_found(arch: str) -> None:
    net = build_classifier(arch, 4)
    name, head = find_linear_head(net)
    assert name == ("fc" if arch == "resnet10" else "class_layers.out")
    assert head.out_features == 4
    if arch == "resnet10":
        assert head.in_features == 128


def test_score_writer_in_an_evaluator(tmp_path: Path) -> None:
    from monai.engines import SupervisedEvaluator

    from medood.detectors.posthoc import fit_many
    from medood.handlers.posthoc_scores import PosthocScoreWriter

    net = trained_classifier(2)
    x, y = blob_images(2, 30, seed=1)
    dets = fit_many(build_detectors("msp,odin,knn", net, {"knn": {"k": 5}}), net, _loader(x, y))
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
