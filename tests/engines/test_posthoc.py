"""medood.engines.posthoc: the post-hoc detector family, evaluate_posthoc on the toy task, saving and loading."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medood.data.errors import DataError
from medood.engines.posthoc import (
    build_detectors,
    evaluate_posthoc,
    load_detectors,
    parse_detectors,
    posthoc_detector_names,
    save_detectors,
)
from medood.metrics.tables import FPR95_CONVENTION
from tests.helpers.class_folders import one_thread
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
        "gen",
        "rmd",
        "fdbd",
        "dice",
        "ash",
        "ash_b",
        "ash_p",
        "scale",
        "nnguide",
        "she",
    } == set(names)
    assert parse_detectors("all") == names
    assert parse_detectors(" NERO, msp ,nero") == ["nero", "msp"]
    with pytest.raises(ValueError, match="ae"):
        parse_detectors("msp,ae")  # a trained, map-producing detector is not post-hoc


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
    assert set(payload["seconds"]["score_id"]) == {"features", "input_grad"}
    assert payload["seconds"]["score_id"]["input_grad"] > 0, "ODIN's own passes are timed apart"
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


def test_evaluate_needs_an_ood_set_and_data() -> None:
    net = trained_classifier(2)
    x, y = blob_images(2, 12, seed=1)
    with pytest.raises(ValueError, match="at least one OOD set"):
        evaluate_posthoc(net, _loader(x, y), _loader(x, y), {}, "msp")
    with pytest.raises(ValueError, match="empty loader"):
        evaluate_posthoc(net, _loader(x, y), [], {"noise": _loader(x)}, "msp")


def test_load_detectors_names_the_file_when_a_fit_is_missing(tmp_path: Path) -> None:
    net = trained_classifier(2)
    path = save_detectors(build_detectors("msp,odin", net), tmp_path / "d.pt")
    load_detectors(build_detectors("msp", net), path)  # detectors without a fit load fine
    with pytest.raises(DataError, match=r"d\.pt.*'knn'"):
        load_detectors(build_detectors("knn", net), path)
    with pytest.raises(DataError, match=r"missing\.pt.*does not exist"):
        load_detectors(build_detectors("msp", net), tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not evaluated"):
        build_detectors("msp", net, {"knn": {"k": 3}})
