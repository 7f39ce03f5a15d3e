"""HeatmapDetector: the official score formula, the feature range, the frozen classifier, the declared stage."""

from __future__ import annotations

import pytest
import torch

from medood.detectors import NotFittedError, get_detector
from medood.detectors.heatmap import HeatmapDetector
from medood.detectors.heatmap_data import ood_pair_batches
from medood.detectors.posthoc import score_many
from medood.engines.fit import fit_detector
from medood.engines.heatmap import ood_pairs
from tests.helpers import toy


def fitted_untrained(model: torch.nn.Module, sd: int = 2, channels: int = 1) -> HeatmapDetector:
    """A detector whose feature range is fitted on toy images and whose decoder is random (not trained)."""
    det = HeatmapDetector(
        model=model, image_size=16, spatial_dims=sd, in_channels=channels, decoder={"base_channels": 4}
    )
    x = toy.blob_images(sd, 12, seed=0)[0].expand(-1, channels, *[-1] * sd)
    det.fit_statistics([x])
    return det.mark_fitted().eval()  # type: ignore[return-value]


def test_score_is_the_mean_over_pixels_of_the_channel_max_abs_residual() -> None:
    torch.manual_seed(0)
    net = toy.TinyClassifier(2, in_channels=3).eval()
    det = fitted_untrained(net, channels=3)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        z = net.features(x)
        lo, hi = min(0.0, float(det.feature_min)), float(det.feature_max)
        h = det.decoder((z - lo) / (hi - lo), net.fc(z).argmax(1))  # the official generator call
        out = det.score(x)
    torch.testing.assert_close(out.anomaly_map, h.abs().amax(1, keepdim=True))
    torch.testing.assert_close(out.image_score, h.abs().amax(1).mean(dim=(1, 2)))
    torch.testing.assert_close(out.extras["residual"], h)
    assert det.score_reduction == "mean"


def test_feature_range_is_the_true_min_max_with_zero_included() -> None:
    det = HeatmapDetector(in_features=3, num_classes=2, image_size=8, in_channels=1)
    det.fit_feature_range(torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.5, 7.0]]))
    assert (float(det.feature_min), float(det.feature_max)) == (0.0, 7.0)  # min starts at 0 (official)
    det.fit_feature_range(torch.tensor([[-2.0, 1.0, 0.0], [3.0, -5.0, 1.0]]))
    assert (float(det.feature_min), float(det.feature_max)) == (-5.0, 3.0)
    with pytest.raises(ValueError, match="all 0"):
        det.fit_feature_range(torch.zeros(4, 3))


def test_fit_keeps_the_classifier_frozen_and_trains_the_decoder() -> None:
    torch.manual_seed(0)
    net = toy.trained_classifier(2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    det = HeatmapDetector(model=net, **{**HeatmapDetector.tiny_config(2), "epochs": 5})
    dec_before = {k: v.clone() for k, v in det.decoder.state_dict().items()}
    det.fit(toy.id_loader(2, n=24, batch_size=12), trainer=fit_detector, progress=False)
    assert not net.training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"classifier weight {k} changed")
    assert any(not torch.equal(v, dec_before[k]) for k, v in det.decoder.state_dict().items())
    assert det.is_fitted and float(det.feature_max) > 0


def test_declared_stage_is_the_papers_optimiser_on_ood_pairs() -> None:
    det = HeatmapDetector(in_features=4, num_classes=2, image_size=8, in_channels=1)
    (stage,) = det.training_stages()
    assert (stage.name, stage.network, stage.build_data) == ("decoder", "decoder", ood_pair_batches)
    assert stage.target_key == ("target", "features", "pred")
    assert (stage.lr, stage.epochs, stage.batch_size, dict(stage.optimizer_kwargs)) == (
        2e-4,
        150,
        200,
        {"betas": (0.5, 0.999)},
    )
    assert stage.make_loss().weight == 5.0 and stage.make_loss().input_range is None, "off by default"
    assert det.stage_network("decoder") is det.decoder
    official = HeatmapDetector(in_features=4, num_classes=2, image_size=8, in_channels=1, loss_input_range=(0, 1))
    assert official.training_stages()[0].make_loss().input_range == (0.0, 1.0)


def test_trained_maps_are_near_zero_on_id_and_large_on_auxiliary_ood() -> None:
    torch.manual_seed(0)
    det = get_detector("heatmap", model=toy.trained_classifier(2), **HeatmapDetector.tiny_config(2))
    loader = toy.id_loader(2, n=48, batch_size=12)
    det.fit(loader, trainer=fit_detector, progress=False)
    pairs = ood_pairs(det, loader, 256)[0]  # the training pairs (the same seeded corruptions)
    is_aux = (pairs["image"] != pairs["target"]).flatten(1).any(1)
    with torch.no_grad():
        amap = det.score(pairs["image"]).anomaly_map.flatten(1).mean(1)
        unseen_id = det.score(toy.blob_images(2, 12, seed=7)[0]).anomaly_map.mean()
    assert amap[~is_aux].mean() < 0.1, f"ID heatmaps should be near zero, mean |h| = {amap[~is_aux].mean():.3f}"
    assert unseen_id < 0.1, f"unseen ID heatmaps: mean |h| = {unseen_id:.3f}"
    ratio = amap[is_aux].mean() / amap[~is_aux].mean()
    assert ratio > 3, f"auxiliary OOD / ID mean |h| = {ratio:.2f}"
    # the residual points towards the target: x + h is closer to t than x is
    with torch.no_grad():
        h = det.score(pairs["image"]).extras["residual"]
    before = (pairs["image"] - pairs["target"])[is_aux].pow(2).mean()
    after = (pairs["image"] + h - pairs["target"])[is_aux].pow(2).mean()
    assert after < 0.7 * before, f"residual error {after:.4f} vs no residual {before:.4f}"


def test_joins_the_shared_backbone_pass_of_the_posthoc_detectors() -> None:
    net = toy.trained_classifier(2)
    det = fitted_untrained(net)
    msp = get_detector("msp", model=net)
    x = toy.blob_images(2, 6, seed=3)[0]
    scored = score_many({"heatmap": det, "msp": msp}, net, [x])
    torch.testing.assert_close(scored.scores["heatmap"], det.score(x).image_score)


def test_errors() -> None:
    with pytest.raises(ValueError, match="needs the classifier"):
        HeatmapDetector(image_size=8)
    with pytest.raises(ValueError, match="aux_corruptions"):
        HeatmapDetector(in_features=4, num_classes=2, aux_corruptions=("jpeg",))
    det = fitted_untrained(toy.trained_classifier(2))
    with pytest.raises(ValueError, match="paints"):
        det.score(torch.rand(2, 1, 20, 20))
    with pytest.raises(NotFittedError):
        HeatmapDetector(model=toy.trained_classifier(2), image_size=16, in_channels=1).score(torch.rand(1, 1, 16, 16))


def test_fit_many_refuses_to_fit_a_detector_that_trains_a_network() -> None:
    from medood.detectors.posthoc import fit_many

    net = toy.trained_classifier(2)
    det = HeatmapDetector(model=net, image_size=16, in_channels=1)
    with pytest.raises(ValueError, match="train networks"):
        fit_many({"heatmap": det, "msp": get_detector("msp", model=net)}, net, toy.id_loader(2, n=6))
    assert not det.is_fitted
