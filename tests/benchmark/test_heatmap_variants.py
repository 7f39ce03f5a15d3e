"""The heatmap variant builder of ``scripts/choose_heatmap_variant.py``: options reach the detector, the default
is decoder 0 of the ensemble, member scores average to the ensemble's score (tiny random data); the choice rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medood.benchmark.heatmap_variants import (
    VARIANTS,
    build_variant,
    choose_variant,
    ensemble_member,
    held_out_corruptions,
    member_scores,
    variant_metrics,
)
from medood.detectors.heatmap import HeatmapDetector
from medood.engines.fit import fit_detector
from tests.helpers import toy


def _base() -> dict:
    return {**HeatmapDetector.tiny_config(2), "model": toy.trained_classifier(2), "epochs": 2}


def test_variant_builder_passes_each_option_to_the_detector() -> None:
    base = _base()
    dets = {v: build_variant(base, v, seed=3, feature_layers=("features.1",)) if v == "multi_layer"
            else build_variant(base, v, seed=3) for v in VARIANTS}  # fmt: skip
    assert dets["loss_range"].loss_input_range == (0.0, 1.0) and dets["default"].loss_input_range is None
    assert dets["loss_range"].training_stages()[0].loss_kwargs["input_range"] == (0.0, 1.0)
    assert len(dets["ensemble5"].decoders) == 5 and len(dets["default"].decoders) == 1
    assert dets["multi_layer"].feature_layers == ("features.1",)
    assert dets["multi_layer"].decoder_in_features == 16 + 8, "penultimate 16 + 8 pooled channels"
    assert VARIANTS["multi_layer"]["feature_layers"] == ("layer3",), "the bundles' ResNets: their last two stages"
    assert all(d.seed == 3 for d in dets.values())
    assert dets["default"].model is not base["model"], "each variant hooks its own copy of the classifier"
    with pytest.raises(ValueError, match="unknown heatmap variant"):
        build_variant(base, "five_decoders")


def test_default_is_decoder_zero_of_the_ensemble_and_members_average() -> None:
    base = _base()
    loader = toy.id_loader(2, n=16, batch_size=8)
    single = build_variant(base, "default", seed=1).fit(loader, trainer=fit_detector, progress=False)
    ens = build_variant(base, "ensemble5", seed=1, n_decoders=2).fit(loader, trainer=fit_detector, progress=False)
    for k, v in single.decoder.state_dict().items():
        torch.testing.assert_close(ens.decoder.state_dict()[k], v, msg=f"decoder 0 differs at {k}")
    x = toy.blob_images(2, 4, seed=7)[0]
    cols = member_scores(ens, x)
    assert cols.shape == (4, 2) and not torch.allclose(cols[:, 0], cols[:, 1])
    torch.testing.assert_close(cols.mean(1), ens.score(x).image_score)
    torch.testing.assert_close(cols[:, 0], single.score(x).image_score)
    torch.testing.assert_close(ensemble_member(ens, base, 1).score(x).image_score, cols[:, 1])


def test_held_out_corruptions_drop_the_validation_family() -> None:
    manifest = {"sets": {"val_spike": {"dir": "/b/val_ood/spike", "role": "ood_val"},
                         "xray": {"dir": "/b/data/ood_far/xray", "role": "ood_test"}}}  # fmt: skip
    assert held_out_corruptions(manifest, ["noise", "spike", "xray"]) == ["noise", "xray"]


def test_variant_metrics_pair_runs_and_the_rule_needs_interval_and_runs() -> None:
    rng = np.random.default_rng(0)
    default = {"id": rng.normal(0, 1, (40, 3)), "a": rng.normal(1, 1, (30, 3)), "b": rng.normal(2, 1, (30, 3))}
    better = {k: v + (0 if k == "id" else 3) for k, v in default.items()}
    m = variant_metrics({"default": default, "same": default, "better": better}, "id", n_boot=50)
    assert len(m["default"]["run_mean_aurocs"]) == 3 and set(m["default"]["sets"]) == {"a", "b"}
    assert m["same"]["vs_default"]["difference"] == 0 and m["same"]["vs_default"]["runs"] == [0, 0, 0]
    assert m["better"]["vs_default"]["ci"][0] > 0 and m["better"]["mean_auroc"] > m["default"]["mean_auroc"]
    assert choose_variant(m)[0] == "better"

    def made_up(mean: float, ci_lo: float, runs: list[float]) -> dict:
        return {"mean_auroc": mean, "vs_default": {"difference": float(np.mean(runs)), "ci": [ci_lo, 1.0],
                                                   "runs": runs}}  # fmt: skip

    rows = {"default": {"mean_auroc": 0.7}, "two_of_five": made_up(0.9, 0.01, [0.3, 0.3, -0.1, -0.1, -0.1]),
            "ci_touches_0": made_up(0.8, -0.01, [0.1] * 5), "four_of_five": made_up(0.75, 0.01, [0.1] * 4 + [-0.1]),
            "five_of_five": made_up(0.74, 0.01, [0.1] * 5)}  # fmt: skip
    chosen, why = choose_variant(rows)
    assert chosen == "four_of_five", "the highest mean AUROC among those passing both conditions"
    assert "not above 0" in why["ci_touches_0"] and "needed: 4" in why["two_of_five"]
    assert choose_variant({"default": rows["default"], "x": rows["ci_touches_0"]})[0] == "default"


def test_default_is_the_official_single_decoder_even_on_a_bundle_that_ships_a_variant() -> None:
    """The pathology bundle ships 5 decoders, the endoscopy one a multi-layer input: 'default' undoes both."""
    base = {**_base(), "n_decoders": 3, "feature_layers": ("features.1",)}
    default = build_variant(base, "default", seed=0)
    assert len(default.decoders) == 1 and default.feature_layers == ()
    ens = build_variant(base, "ensemble5", seed=0)
    assert len(ens.decoders) == 5 and ens.feature_layers == ()
    ens = ens.fit(toy.id_loader(2, n=8, batch_size=8), trainer=fit_detector, progress=False)
    member = ensemble_member(ens, base, 2)  # loads decoder 2 into a one-decoder detector
    x = toy.blob_images(2, 3, seed=1)[0]
    torch.testing.assert_close(member.score(x).image_score, member_scores(ens, x)[:, 2])
