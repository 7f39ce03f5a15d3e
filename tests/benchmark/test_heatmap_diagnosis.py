"""The per-stage figures of ``scripts/diagnose_heatmap.py`` on tiny data: mix arms, auxiliary groups, the target's
scale, the decoder response and its gap, image-statistics correlations, the verdict and the page."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.benchmark.heatmap_diagnosis import (
    MIXES,
    alternative_targets,
    auxiliary_groups,
    image_scores,
    intensity_figures,
    limiting_stage,
    mix_options,
    response_figures,
    shipped_options,
    target_figures,
)
from medood.benchmark.heatmap_diagnosis_page import finding, markdown
from medood.benchmark.heatmap_variants import VARIANTS, build_variant
from medood.benchmark.stats import summarise_runs
from medood.detectors.heatmap import HeatmapDetector
from medood.detectors.heatmap_data import nearest_id_targets, ood_pairs, predicted_features
from medood.engines.fit import train_heatmap_decoder
from medood.engines.heatmap import heatmap_training_datalist
from tests.helpers import toy


def _fitted(corruptions: tuple[str, ...] = ("noise", "bias")) -> tuple[HeatmapDetector, torch.Tensor]:
    base = {**HeatmapDetector.tiny_config(2), "model": toy.trained_classifier(2), "epochs": 2}
    det = build_variant(base, "default", seed=2, aux_corruptions=corruptions, aux_per_image=1)
    loader = toy.id_loader(2, n=16, batch_size=8)
    train_heatmap_decoder(det, loader, None, progress=False)
    return det.eval(), torch.cat([b["image"] for b in loader])


def test_mix_options_drop_corruptions_or_organs() -> None:
    opts = {"aux_corruptions": ["noise"], "epochs": 3}
    assert mix_options("both", opts) == (opts, True)
    assert mix_options("corruptions", opts) == (opts, False)
    assert mix_options("other_organs", opts) == ({"aux_corruptions": (), "epochs": 3}, True)
    assert set(MIXES) == {"both", "corruptions", "other_organs", "pixel_target"}
    assert mix_options("pixel_target", opts) == ({**opts, "target_space": "pixels"}, True)
    with pytest.raises(ValueError, match="unknown auxiliary mix"):
        mix_options("organs", opts)


def test_auxiliary_groups_are_the_training_pairs_corruptions() -> None:
    det, x = _fitted()
    organs = toy.ood_images(2, 5, seed=3)
    groups = auxiliary_groups(det, x, organs)
    assert set(groups) == {"corruptions", "other_organs"} and groups["other_organs"] is organs
    assert groups["corruptions"].shape == x.shape and not torch.allclose(groups["corruptions"], x)
    pairs = ood_pairs(det, [{"image": x}], batch_size=64)[0]
    aux_inputs = pairs["image"][~(pairs["image"] == pairs["target"]).flatten(1).all(1)]
    key = lambda t: sorted(t.flatten(1).sum(1).tolist())  # noqa: E731 - order-free comparison of image sets
    np.testing.assert_allclose(key(aux_inputs), key(groups["corruptions"]), rtol=1e-5)
    no_corruptions = build_variant({**HeatmapDetector.tiny_config(2), "model": toy.trained_classifier(2)}, "default",
                                   aux_corruptions=())  # fmt: skip
    assert set(auxiliary_groups(no_corruptions, x, None)) == set()


def test_target_figures_measure_the_distance_to_the_nearest_id_image() -> None:
    det, x = _fitted()
    flat = torch.full_like(x[:4], 0.5)
    out = target_figures(det, x, {"same": x, "flat": flat}, reference="same")
    assert out["same"]["target"] == pytest.approx(0.0, abs=1e-7), "an ID image is its own nearest target"
    assert out["flat"]["target_auroc"] == 1.0 and "target_auroc" not in out["same"], "oracle: 0 on ID, > 0 on flat"
    assert out["flat"]["painted_auroc"] == pytest.approx(
        float(np.mean(image_scores(det, flat)[:, None] > image_scores(det, x)[None]))
    )
    id_f, id_p = predicted_features(det, [x])
    f, p = predicted_features(det, [flat])
    idx = nearest_id_targets(id_f, id_p, f, p)
    expected = (x[idx] - 0.5).abs().amax(1).flatten(1).mean(1).mean()
    assert out["flat"]["target"] == pytest.approx(float(expected), rel=1e-5)
    assert out["flat"]["painted"] == pytest.approx(float(image_scores(det, flat).mean()))
    assert out["flat"]["ratio"] == pytest.approx(out["flat"]["painted"] / out["flat"]["target"])
    np.testing.assert_allclose(image_scores(det, x), det.score(x).image_score.double().numpy(), rtol=1e-5)
    alt = alternative_targets(det, x, {"ref": x, "same": x.clone(), "flat": flat}, "ref")
    assert alt["pixels"] == {"same": 0.5, "flat": 1.0, "mean": 0.75}, "ID images are their own nearest in pixels"
    assert alt["pixels_same_class"]["flat"] == 1.0 and set(alt) == {"pixels", "pixels_same_class"}


def test_response_gap_and_intensity_correlations() -> None:
    rng = np.random.default_rng(0)
    train = rng.uniform(1, 2, 50)
    out = response_figures({"train": train, "same": rng.uniform(1, 2, 50), "far": train + 2}, "train", ["same", "far"])
    assert out["gap"]["far"]["auroc"] == 1.0 and out["gap"]["far"]["ratio"] == pytest.approx((1.5 + 2) / 1.5, 0.05)
    assert abs(out["gap"]["same"]["auroc"] - 0.5) < 0.15 and out["mean"]["far"] == pytest.approx(train.mean() + 2)
    images = torch.rand(20, 3, 8, 8) * torch.linspace(0.1, 1, 20)[:, None, None, None]
    c = intensity_figures(images, images.flatten(1).mean(1).numpy())
    assert c["mean_intensity"] == pytest.approx(1.0) and c["contrast"] > 0.8
    assert abs(intensity_figures(images, rng.normal(size=20))["mean_intensity"]) < 0.6


def _figures(gap_ratio: float, gap_auroc: float, paint: float, oracle: float = 0.9) -> dict:
    return {"response": {"mean": {"id_train": 0.1, "id_val": 0.1 * gap_ratio},
                         "gap": {"id_val": {"ratio": gap_ratio, "auroc": gap_auroc}}},
            "targets": {"corruptions": {"n": 4, "target": 0.2, "painted": 0.2 * paint, "ratio": paint}},
            "val_targets": {"id_val": {"n": 3, "target": 0.1, "painted": 0.05, "ratio": 0.5},
                            "val_a": {"n": 3, "target": 0.2, "painted": 0.1, "ratio": 0.5, "target_auroc": oracle,
                                      "painted_auroc": 0.8}},
            "intensity": {"id_val": {"mean_intensity": 0.1, "contrast": -0.2}},
            "alternative_targets": {"pixels": {"val_a": 0.7, "mean": 0.7}}}  # fmt: skip


def test_limiting_stage_verdicts_and_the_page() -> None:
    assert limiting_stage(_figures(1.0, 0.5, 0.9), "both")["stages"] == []
    assert limiting_stage(_figures(2.0, 0.9, 0.9), "both")["stages"] == ["generalisation"]
    assert limiting_stage(_figures(2.0, 0.6, 0.9), "both")["stages"] == [], "a ratio alone is no gap"
    assert limiting_stage(_figures(1.0, 0.5, 0.9, oracle=0.8), "both")["stages"] == ["target_definition"]
    assert limiting_stage(_figures(1.0, 0.5, 0.9), "pixel_target")["stages"] == [], "a target arm is no mix stage"
    lim = limiting_stage(_figures(1.0, 0.5, 0.1), "corruptions")
    assert lim["stages"] == ["target_scale", "auxiliary_mix"] and lim["underpainted_groups"] == ["corruptions"]
    runs = [_figures(1.0, 0.5, 0.2), _figures(1.0, 0.7, 0.4)]
    assert summarise_runs(runs)["targets"]["corruptions"] == {"n": 4, "target": 0.2, "painted": pytest.approx(0.06),
                                                             "ratio": pytest.approx(0.3)}  # fmt: skip
    mix = {"sets": {"val_a": {"auroc": 0.8}}, "set_aurocs": {"val_a": [0.8, 0.7]}, "run_mean_aurocs": [0.8, 0.7],
           "mean_auroc": 0.75, "train_seconds": [1.0, 2.0]}  # fmt: skip
    worse = {**mix, "mean_auroc": 0.6, "vs_both": {"difference": -0.15, "ci": [-0.2, -0.1], "runs": [-0.1, -0.2]}}
    task = {"bundle": "bundles/b", "detector_options": {}, "n": {"id_train": 5, "id_val": 3}, "training": {},
            "other_organ_images": 2, "mix_arms": {}, "arm_options": {}, "figures": {"both": runs[0]}, "chosen": "both",
            "why": {"corruptions": "worse"}, "mixes": {"both": mix, "corruptions": worse},
            "limiting": limiting_stage(runs[0], "both"), "vim_reference": {"val_a": 0.9, "mean": 0.9}}  # fmt: skip
    text = finding("toy", task)
    assert (
        "AUROC 75.0 vs ViM on the same classifier 90.0 (behind ViM here too); limiting stage: target scale" in text
        and "0.20 of |t - x| on corruptions" in text
    )
    assert (
        "both 75.0, corruptions 60.0" in text
        and "exactly |t - x| would reach mean AUROC 90.0" in text
        and "1.00x the training images" in text
    )
    page = markdown({"command": "c", "seconds": 1.0, "machine": "m", "omp_threads": "1", "epochs": 2, "seeds": 2,
                     "n_decoders": 1, "thresholds": {}, "rule": "r", "tasks": {"toy": task}})  # fmt: skip
    assert "nearest in pixels: mean 70.0 (val_a 70.0)" in page
    assert text in page and "| corruptions | 80.0 | 60.0 (70.0-80.0) | -15.0 [-20.0, -10.0]; runs -10.0 -20.0 |" in page


def test_pixel_targets_are_the_nearest_id_image_in_pixels() -> None:
    det, x = _fitted()
    det.target_space = "pixels"
    pairs = ood_pairs(det, [{"image": x}], batch_size=64)[0]
    aux = ~(pairs["image"] == pairs["target"]).flatten(1).all(1)
    d = torch.cdist(pairs["image"][aux].flatten(1), x.flatten(1))
    torch.testing.assert_close(pairs["target"][aux], x[d.argmin(1)])
    det.target_space = "features"
    feature_pairs = ood_pairs(det, [{"image": x}], batch_size=64)[0]
    assert not torch.equal(feature_pairs["target"], pairs["target"]), "the feature search picks other targets"
    base = {**HeatmapDetector.tiny_config(2), "model": toy.trained_classifier(2)}
    with pytest.raises(ValueError, match="target_space"):
        build_variant(base, "default", target_space="pixel")
    with pytest.raises(NotImplementedError, match="feature space only"):
        heatmap_training_datalist(build_variant(base, "default", target_space="pixels"), [{"image": "a"}], [], None)


def test_shipped_options_override_a_variant_that_pins_the_official_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {**HeatmapDetector.tiny_config(2), "model": toy.trained_classifier(2), "n_decoders": 2,
            "feature_layers": ["features.1"]}  # fmt: skip
    monkeypatch.setitem(VARIANTS, "default", {"n_decoders": 1, "feature_layers": ()})
    assert shipped_options(base) == {"n_decoders": 2, "feature_layers": ("features.1",)}
    det = build_variant(base, "default", **shipped_options(base))
    assert len(det.decoders) == 2 and det.feature_layers == ("features.1",)
    assert shipped_options({}) == {"n_decoders": 1, "feature_layers": ()}
